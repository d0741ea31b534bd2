package stepca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/pki/stepca"
	"github.com/edgeenroll/edgeenroll/pki/stepca/stepcatest"
)

// newX5CIssuer is an Issuer for ca's X5C provisioner with cred (nil: the
// CA's own credential, read from its files).
func newX5CIssuer(t *testing.T, ca *stepcatest.CA, cred *stepca.X5CCredential, edit ...func(*stepca.Options)) *stepca.Issuer {
	t.Helper()
	if cred == nil {
		var err error
		if cred, err = stepca.ReadX5CCredential(ca.X5CCertFile, ca.X5CKeyFile, ca.PasswordFile); err != nil {
			t.Fatal(err)
		}
	}
	return newIssuer(t, ca, append([]func(*stepca.Options){func(o *stepca.Options) {
		o.Provisioner, o.Key, o.X5C = ca.X5CProvisioner, nil, cred
	}}, edit...)...)
}

// An X5C credential gets device certificates from step-ca's X5C
// provisioner: the token's x5c header carries the chain, step-ca verifies
// it against the provisioner's roots and the token with the leaf's key.
func TestX5CIssueDevice(t *testing.T) {
	ca := stepcatest.Start(t, &stepcatest.Options{Template: ClientAuthTemplate})
	iss := newX5CIssuer(t, ca, nil)
	if err := iss.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if got, want := iss.CredentialNotAfter(), ca.X5CChain[0].NotAfter; !got.Equal(want) {
		t.Errorf("CredentialNotAfter = %s; want %s", got, want)
	}
	d := newDevice(t)
	before := time.Now()
	got, err := iss.IssueDevice(context.Background(), d.request(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	leaf := got.Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: ca.RootPool(), Intermediates: pool(got.Chain[1:]...), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("leaf does not chain to step-ca's root: %v", err)
	}
	if id, err := pki.DeviceIDFromCertificate(leaf, pki.DefaultTrustDomain); err != nil || id != d.id {
		t.Errorf("device identity = %q, %v; want %s", id, err, d.id)
	}
	if want := before.Add(2 * time.Hour); leaf.NotAfter.After(want) || leaf.NotAfter.Before(want.Add(-time.Minute)) {
		t.Errorf("NotAfter = %s; want about %s", leaf.NotAfter, want)
	}
	if !hasProvisioner(leaf, stepcatest.X5CProvisionerName) {
		t.Error("the leaf does not name the X5C provisioner in step-ca's provisioner extension")
	}
}

// hasProvisioner reports whether cert carries step-ca's provisioner
// extension (OID 1.3.6.1.4.1.37476.9000.64.1) naming name.
func hasProvisioner(cert *x509.Certificate, name string) bool {
	for _, e := range cert.Extensions {
		if e.Id.String() == "1.3.6.1.4.1.37476.9000.64.1" {
			return strings.Contains(string(e.Value), name)
		}
	}
	return false
}

// A chain that does not lead to the provisioner's roots is refused: by
// Check at startup, and by step-ca itself for every token.
func TestX5CForgedChain(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	now := time.Now()
	chain, key := stepcatest.NewX5CAuthority(t, "forged").Issue(t, "enrolld", now.Add(-time.Minute), now.Add(time.Hour*24))
	// The leaf alone, under the real intermediate's name, is no better.
	selfSigned, selfKey := selfSignedLike(t, ca.X5CChain[0])
	d := newDevice(t)
	for _, tt := range []struct {
		name string
		cred *stepca.X5CCredential
	}{
		{"another authority", &stepca.X5CCredential{Chain: chain, Key: key}},
		{"self-signed copy of the leaf", &stepca.X5CCredential{Chain: []*x509.Certificate{selfSigned}, Key: selfKey}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			iss := newX5CIssuer(t, ca, tt.cred)
			err := iss.Check(context.Background())
			if !errors.Is(err, stepca.ErrProvisioner) || !strings.Contains(err.Error(), "does not chain to the roots") {
				t.Errorf("Check: %v; want ErrProvisioner about the roots", err)
			}
			_, err = iss.IssueDevice(context.Background(), d.request(time.Hour))
			if !errors.Is(err, stepca.ErrProvisioner) || !strings.Contains(err.Error(), "chains to its roots") || !strings.Contains(err.Error(), "401") {
				t.Fatalf("IssueDevice: %v; want step-ca's 401 as ErrProvisioner about the chain", err)
			}
			t.Logf("%v", err)
		})
	}
}

// selfSignedLike makes a self-signed certificate with tmpl's names and
// usages and a fresh key.
func selfSignedLike(t *testing.T, tmpl *x509.Certificate) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: tmpl.SerialNumber, Subject: tmpl.Subject, NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter,
		KeyUsage: tmpl.KeyUsage, ExtKeyUsage: tmpl.ExtKeyUsage,
	}, &x509.Certificate{Subject: tmpl.Issuer, SerialNumber: tmpl.SerialNumber}, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// No device certificate outlives the credential: step-ca would refuse it,
// so the lifetime is cut to the credential's end, and a credential too
// close to its end (or not yet valid) is a clear error.
func TestX5CCredentialLifetime(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	now := time.Now()
	d := newDevice(t)
	t.Run("cut to the credential", func(t *testing.T) {
		end := now.Add(2 * time.Hour).Truncate(time.Second)
		chain, key := ca.X5C.Issue(t, "enrolld", now.Add(-time.Minute), end)
		iss := newX5CIssuer(t, ca, &stepca.X5CCredential{Chain: chain, Key: key})
		if err := iss.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
		got, err := iss.IssueDevice(context.Background(), d.request(24*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if !got.Leaf.NotAfter.Equal(end) {
			t.Errorf("NotAfter = %s; want the credential's %s", got.Leaf.NotAfter, end)
		}
	})
	for _, tt := range []struct {
		name      string
		from, end time.Time
		want      string
	}{
		{"expires within MinLeafLifetime", now.Add(-time.Hour), now.Add(pki.MinLeafLifetime - time.Minute), "less than"},
		{"expired", now.Add(-2 * time.Hour), now.Add(-time.Hour), "valid from"},
		{"not yet valid", now.Add(time.Hour), now.Add(3 * time.Hour), "valid from"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			chain, key := ca.X5C.Issue(t, "enrolld", tt.from, tt.end)
			iss := newX5CIssuer(t, ca, &stepca.X5CCredential{Chain: chain, Key: key})
			if err := iss.Check(context.Background()); !errors.Is(err, stepca.ErrCredentialExpired) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Check: %v; want ErrCredentialExpired about %q", err, tt.want)
			}
			if _, err := iss.IssueDevice(context.Background(), d.request(time.Hour)); !errors.Is(err, stepca.ErrCredentialExpired) {
				t.Errorf("IssueDevice: %v; want ErrCredentialExpired", err)
			}
		})
	}
}

// A credential for the other provisioner type is named as such.
func TestProvisionerTypeMismatch(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	cred, err := stepca.ReadX5CCredential(ca.X5CCertFile, ca.X5CKeyFile, ca.PasswordFile)
	if err != nil {
		t.Fatal(err)
	}
	x5cForJWK := newIssuer(t, ca, func(o *stepca.Options) { o.Key, o.X5C = nil, cred })
	if err := x5cForJWK.Check(context.Background()); !errors.Is(err, stepca.ErrProvisioner) || !strings.Contains(err.Error(), "of type JWK") {
		t.Errorf("x5c credential for the JWK provisioner: %v; want ErrProvisioner naming its type", err)
	}
	jwkForX5C := newIssuer(t, ca, func(o *stepca.Options) { o.Provisioner = ca.X5CProvisioner })
	if err := jwkForX5C.Check(context.Background()); !errors.Is(err, stepca.ErrProvisioner) || !strings.Contains(err.Error(), "of type X5C") {
		t.Errorf("JWK key for the X5C provisioner: %v; want ErrProvisioner naming its type", err)
	}
}

func TestX5COptions(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	other, _ := ca.X5C.Issue(t, "other", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	noSign := issueWithUsage(t, ca, x509.KeyUsageKeyEncipherment, x509.ExtKeyUsageClientAuth)
	serverOnly := issueWithUsage(t, ca, x509.KeyUsageDigitalSignature, x509.ExtKeyUsageServerAuth)
	tests := []struct {
		name string
		edit func(*stepca.Options)
		want string
	}{
		{"key and x5c", func(o *stepca.Options) { o.Key = ca.Key }, "both"},
		{"no certificate", func(o *stepca.Options) { o.X5C = &stepca.X5CCredential{Key: ca.X5CKey} }, "no certificate"},
		{"no key", func(o *stepca.Options) { o.X5C = &stepca.X5CCredential{Chain: ca.X5CChain} }, "no private key"},
		{"another certificate's key", func(o *stepca.Options) {
			o.X5C = &stepca.X5CCredential{Chain: append([]*x509.Certificate{other[0]}, ca.X5CChain[1:]...), Key: ca.X5CKey}
		}, "not the key"},
		{"wrong order", func(o *stepca.Options) {
			o.X5C = &stepca.X5CCredential{Chain: []*x509.Certificate{ca.X5CChain[0], ca.X5C.Root}, Key: ca.X5CKey}
		}, "not signed by"},
		{"no digitalSignature", func(o *stepca.Options) { o.X5C = noSign }, "digitalSignature"},
		{"serverAuth only", func(o *stepca.Options) { o.X5C = serverOnly }, "clientAuth"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := stepca.Options{URL: ca.URL, Roots: ca.RootPEM(), Provisioner: ca.X5CProvisioner,
				X5C: &stepca.X5CCredential{Chain: ca.X5CChain, Key: ca.X5CKey}}
			tt.edit(&opts)
			_, err := stepca.New(opts)
			if !errors.Is(err, stepca.ErrOptions) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want ErrOptions about %q", err, tt.want)
			}
		})
	}
}

// issueWithUsage is a credential from ca's X5C authority with other usages.
func issueWithUsage(t *testing.T, ca *stepcatest.CA, ku x509.KeyUsage, eku x509.ExtKeyUsage) *stepca.X5CCredential {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain := ca.X5C.IssueTemplate(t, &x509.Certificate{
		Subject: ca.X5CChain[0].Subject, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: ku, ExtKeyUsage: []x509.ExtKeyUsage{eku},
	}, &key.PublicKey)
	return &stepca.X5CCredential{Chain: chain, Key: key}
}

func TestReadX5CCredential(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wrongPw := write("wrong", []byte("not it\n"))
	plainKey := filepath.Join(dir, "plain.key")
	stepcatest.WriteKey(t, plainKey, ca.X5CKey, nil)
	// An encrypted PKCS#8 key is detected by its block type; pemutil
	// encrypts with 600,000 PBKDF2 rounds, seconds under the race
	// detector, so this one is a damaged stand-in.
	pkcs8Key := write("pkcs8.key", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x00}}))
	certPEM, _ := os.ReadFile(ca.X5CCertFile)
	keyPEM, _ := os.ReadFile(plainKey)
	withKey := write("cert-and-key.pem", append(append([]byte{}, certPEM...), keyPEM...))
	leafOnly := write("leaf.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.X5CChain[0].Raw}))

	for _, tt := range []struct{ name, cert, key, pw string }{
		{"encrypted PEM", ca.X5CCertFile, ca.X5CKeyFile, ca.PasswordFile},
		{"plain key", ca.X5CCertFile, plainKey, ""},
		{"leaf without intermediate", leafOnly, plainKey, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cred, err := stepca.ReadX5CCredential(tt.cert, tt.key, tt.pw)
			if err != nil {
				t.Fatal(err)
			}
			if !cred.Chain[0].Equal(ca.X5CChain[0]) || !publicKeyEqual(cred.Key.Public(), ca.X5CKey.Public()) {
				t.Error("credential differs from the files'")
			}
		})
	}
	for _, tt := range []struct{ name, cert, key, pw, want string }{
		{"encrypted without password", ca.X5CCertFile, ca.X5CKeyFile, "", "encrypted"},
		{"wrong password", ca.X5CCertFile, ca.X5CKeyFile, wrongPw, "wrong password"},
		{"encrypted PKCS#8 without password", ca.X5CCertFile, pkcs8Key, "", "encrypted"},
		{"damaged encrypted PKCS#8", ca.X5CCertFile, pkcs8Key, wrongPw, "wrong password or damaged"},
		{"key in the certificate file", withKey, plainKey, "", "PRIVATE KEY"},
		{"certificate as key", ca.X5CCertFile, leafOnly, "", "not a private key"},
		{"not PEM", ca.PasswordFile, plainKey, "", "no PEM certificate"},
		{"missing file", filepath.Join(dir, "nope"), plainKey, "", "no such file"},
		{"key of another certificate", ca.RootFile, plainKey, "", "not the key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := stepca.ReadX5CCredential(tt.cert, tt.key, tt.pw)
			if !errors.Is(err, stepca.ErrProvisionerKey) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want ErrProvisionerKey about %q", err, tt.want)
			}
		})
	}
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
