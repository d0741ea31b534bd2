package stepca_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/pki/stepca"
	"github.com/edgeenroll/edgeenroll/pki/stepca/stepcatest"
)

// device is a device key and its CSR, as the agent makes them (common name
// = device ID, no other names); in these tests the key is in software.
type device struct {
	id  string
	key *ecdsa.PrivateKey
	csr *x509.CertificateRequest
}

func newDevice(t *testing.T) *device {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(t.Name() + time.Now().String()))
	id := hex.EncodeToString(sum[:])
	return &device{id: id, key: key, csr: newCSR(t, id, key)}
}

func newCSR(t *testing.T, cn string, key crypto.Signer) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func (d *device) request(lifetime time.Duration) pki.DeviceCertRequest {
	return pki.DeviceCertRequest{DeviceID: d.id, PublicKey: &d.key.PublicKey, Lifetime: lifetime, CSR: d.csr}
}

// newIssuer is an Issuer for ca's provisioner (TestReadProvisionerKey
// covers reading its key file).
func newIssuer(t *testing.T, ca *stepcatest.CA, edit ...func(*stepca.Options)) *stepca.Issuer {
	t.Helper()
	opts := stepca.Options{URL: ca.URL, Roots: ca.RootPEM(), Provisioner: ca.Provisioner, Key: ca.Key, Timeout: 5 * time.Second}
	for _, e := range edit {
		e(&opts)
	}
	iss, err := stepca.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iss.Close)
	return iss
}

func TestIssueDevice(t *testing.T) {
	start := time.Now()
	ca := stepcatest.Start(t, nil)
	t.Logf("step-ca started in %s", time.Since(start).Round(time.Millisecond))
	iss := newIssuer(t, ca)
	if err := iss.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	d := newDevice(t)
	before := time.Now()
	got, err := iss.IssueDevice(context.Background(), d.request(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	leaf := got.Leaf
	if len(got.Chain) != 2 || got.Chain[0] != leaf || !got.Chain[1].Equal(ca.Intermediate) {
		t.Fatalf("chain = %d certificates; want the leaf, then step-ca's intermediate", len(got.Chain))
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: ca.RootPool(), Intermediates: pool(got.Chain[1:]...), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Errorf("leaf does not chain to step-ca's root: %v", err)
	}
	if id, err := pki.DeviceIDFromCertificate(leaf, pki.DefaultTrustDomain); err != nil || id != d.id {
		t.Errorf("device identity = %q, %v; want %s", id, err, d.id)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&d.key.PublicKey) {
		t.Error("leaf is not for the device key")
	}
	if want := before.Add(2 * time.Hour); leaf.NotAfter.After(want) || leaf.NotAfter.Before(want.Add(-time.Minute)) {
		t.Errorf("NotAfter = %s; want about %s", leaf.NotAfter, want)
	}
	// The same device again: a fresh one-time token each time.
	again, err := iss.IssueDevice(context.Background(), d.request(0))
	if err != nil {
		t.Fatal(err)
	}
	if again.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("second issuance has the same serial")
	}
}

func TestIssueDeviceConcurrent(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	iss := newIssuer(t, ca)
	const n = 16
	devices := make([]*device, n)
	for i := range devices {
		devices[i] = newDevice(t)
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, d := range devices {
		wg.Go(func() {
			_, errs[i] = iss.IssueDevice(context.Background(), d.request(time.Hour))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// The lifetime comes from the request and is bounded by the
// provisioner's limits: learnt by Check, enforced by step-ca either way.
func TestLifetimeBoundedByProvisioner(t *testing.T) {
	ca := stepcatest.Start(t, &stepcatest.Options{MaxTLSCertDuration: time.Hour, DefaultTLSCertDuration: time.Hour})
	iss := newIssuer(t, ca)
	d := newDevice(t)
	_, err := iss.IssueDevice(context.Background(), d.request(24*time.Hour))
	if !errors.Is(err, stepca.ErrRefused) {
		t.Fatalf("24h from a provisioner allowing 1h, before Check: %v; want ErrRefused", err)
	}
	t.Logf("step-ca's refusal: %v", err)
	if err := iss.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := iss.IssueDevice(context.Background(), d.request(24*time.Hour))
	if err != nil {
		t.Fatalf("after Check: %v", err)
	}
	if life := time.Until(got.Leaf.NotAfter); life > time.Hour || life < 58*time.Minute {
		t.Errorf("leaf lives %s more; want the provisioner's 1h", life)
	}
}

func TestIssueDeviceRequestRefusals(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	iss := newIssuer(t, ca)
	d := newDevice(t)
	other := newDevice(t)
	tests := []struct {
		name string
		edit func(*pki.DeviceCertRequest)
		want error
	}{
		{"no CSR", func(r *pki.DeviceCertRequest) { r.CSR = nil }, stepca.ErrRequest},
		{"CSR for another key", func(r *pki.DeviceCertRequest) { r.CSR = other.csr }, stepca.ErrRequest},
		{"bad device id", func(r *pki.DeviceCertRequest) { r.DeviceID = "xyz" }, pki.ErrDeviceID},
		{"lifetime too long", func(r *pki.DeviceCertRequest) { r.Lifetime = pki.MaxLeafLifetime + time.Hour }, pki.ErrLifetime},
		{"no public key", func(r *pki.DeviceCertRequest) { r.PublicKey = nil }, pki.ErrPublicKey},
		// step-ca's own check: the CSR's common name must be the token's
		// subject (or a SAN).
		{"CSR names another device", func(r *pki.DeviceCertRequest) { r.CSR = newCSR(t, other.id, d.key) }, stepca.ErrRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := d.request(time.Hour)
			tt.edit(&req)
			_, err := iss.IssueDevice(context.Background(), req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v; want %v", err, tt.want)
			}
		})
	}
}

// A key that is not the provisioner's: a clear error from Check at startup
// and from every issuance.
func TestWrongProvisionerKey(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	d := newDevice(t)
	_, wrong := stepcatest.NewJWKProvisioner(t, ca.Provisioner)
	forged := *wrong
	forged.KeyID = ca.Key.KeyID // claims the right key ID, signs with another key
	tests := []struct {
		name string
		key  *jose.JSONWebKey
		prov string
		want string
	}{
		{"another key", wrong, ca.Provisioner, "not this provisioner's key"},
		{"another key under the right kid", &forged, ca.Provisioner, "another public key"},
		{"unknown provisioner", ca.Key, "nobody", "nobody"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss := newIssuer(t, ca, func(o *stepca.Options) { o.Key, o.Provisioner = tt.key, tt.prov })
			err := iss.Check(context.Background())
			if !errors.Is(err, stepca.ErrProvisioner) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Check: %v; want ErrProvisioner naming %q", err, tt.want)
			}
			_, err = iss.IssueDevice(context.Background(), d.request(time.Hour))
			if !errors.Is(err, stepca.ErrProvisioner) || !strings.Contains(err.Error(), tt.prov) {
				t.Errorf("IssueDevice: %v; want ErrProvisioner naming provisioner %q", err, tt.prov)
			}
			t.Logf("%v", err)
		})
	}
}

// step-ca down or hanging: ErrUnavailable within the timeout, never a hang.
func TestStepCAUnavailable(t *testing.T) {
	d := newDevice(t)
	t.Run("stopped", func(t *testing.T) {
		ca := stepcatest.Start(t, nil)
		iss := newIssuer(t, ca)
		ca.Stop()
		start := time.Now()
		_, err := iss.IssueDevice(context.Background(), d.request(time.Hour))
		if !errors.Is(err, stepca.ErrUnavailable) {
			t.Fatalf("err = %v; want ErrUnavailable", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("took %s", el)
		}
		if err := iss.Check(context.Background()); !errors.Is(err, stepca.ErrUnavailable) {
			t.Errorf("Check: %v; want ErrUnavailable", err)
		}
	})
	t.Run("accepts and never answers", func(t *testing.T) {
		ca := stepcatest.Start(t, nil)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		var conns []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c) // held open, never read
				mu.Unlock()
			}
		}()
		defer func() {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		}()
		const timeout = 300 * time.Millisecond
		iss := newIssuer(t, ca, func(o *stepca.Options) { o.URL, o.Timeout = "https://"+ln.Addr().String(), timeout })
		start := time.Now()
		_, err = iss.IssueDevice(context.Background(), d.request(time.Hour))
		if !errors.Is(err, stepca.ErrUnavailable) {
			t.Fatalf("err = %v; want ErrUnavailable", err)
		}
		if el := time.Since(start); el > timeout+time.Second {
			t.Errorf("took %s with a timeout of %s", el, timeout)
		}
		t.Logf("%v", err)
	})
	t.Run("caller's context", func(t *testing.T) {
		ca := stepcatest.Start(t, nil)
		iss := newIssuer(t, ca)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := iss.IssueDevice(ctx, d.request(time.Hour)); !errors.Is(err, stepca.ErrUnavailable) || !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v; want ErrUnavailable wrapping context.Canceled", err)
		}
	})
}

// A step-ca whose TLS certificate does not chain to the configured roots is
// never talked to.
func TestWrongRoots(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	other := stepcatest.Start(t, nil)
	iss := newIssuer(t, ca, func(o *stepca.Options) { o.Roots = other.RootPEM() })
	_, err := iss.IssueDevice(context.Background(), newDevice(t).request(time.Hour))
	if !errors.Is(err, stepca.ErrUnavailable) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("err = %v; want ErrUnavailable about the certificate", err)
	}
}

// What step-ca returns is checked before a device sees it: a provisioner
// template that widens the certificate is refused.
func TestIssuedChainChecks(t *testing.T) {
	tests := []struct {
		name, template, want string
	}{
		{"code signing", `{"subject": {{ toJson .Subject }}, "sans": {{ toJson .SANs }}, "keyUsage": ["digitalSignature"], "extKeyUsage": ["clientAuth", "codeSigning"]}`, "extended key usage"},
		{"no extended key usage", `{"subject": {{ toJson .Subject }}, "sans": {{ toJson .SANs }}, "keyUsage": ["digitalSignature"]}`, "clientAuth"},
		{"server auth only", `{"subject": {{ toJson .Subject }}, "sans": {{ toJson .SANs }}, "keyUsage": ["digitalSignature"], "extKeyUsage": ["serverAuth"]}`, "clientAuth"},
		{"extra DNS name", `{"subject": {{ toJson .Subject }}, "sans": {{ toJson (append .SANs (dict "type" "dns" "value" "enroll.example.com")) }}, "keyUsage": ["digitalSignature"], "extKeyUsage": ["clientAuth"]}`, "DNS"},
		{"another common name", `{"subject": {"commonName": "someone else"}, "sans": {{ toJson .SANs }}, "keyUsage": ["digitalSignature"], "extKeyUsage": ["clientAuth"]}`, "common name"},
		{"no URI SAN", `{"subject": {{ toJson .Subject }}, "keyUsage": ["digitalSignature"], "extKeyUsage": ["clientAuth"]}`, "URI SAN"},
		{"a CA", `{"subject": {{ toJson .Subject }}, "sans": {{ toJson .SANs }}, "keyUsage": ["digitalSignature", "certSign"], "extKeyUsage": ["clientAuth"], "basicConstraints": {"isCA": true, "maxPathLen": 0}}`, "CA"},
	}
	// One CA, one provisioner per template.
	templates := map[string]string{"client-auth-only": ClientAuthTemplate}
	for _, tt := range tests {
		templates[tt.name] = tt.template
	}
	ca := stepcatest.Start(t, &stepcatest.Options{Templates: templates})
	withProvisioner := func(name string) func(*stepca.Options) {
		return func(o *stepca.Options) { o.Provisioner, o.Key = name, ca.Keys[name] }
	}
	d := newDevice(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss := newIssuer(t, ca, withProvisioner(tt.name))
			_, err := iss.IssueDevice(context.Background(), d.request(time.Hour))
			if !errors.Is(err, stepca.ErrChain) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want ErrChain about %q", err, tt.want)
			}
		})
	}
	t.Run("client auth only template", func(t *testing.T) {
		iss := newIssuer(t, ca, withProvisioner("client-auth-only"))
		got, err := iss.IssueDevice(context.Background(), d.request(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if eku := got.Leaf.ExtKeyUsage; len(eku) != 1 || eku[0] != x509.ExtKeyUsageClientAuth {
			t.Errorf("ExtKeyUsage = %v; want clientAuth only", eku)
		}
	})
}

// ClientAuthTemplate is the provisioner template README recommends.
const ClientAuthTemplate = `{
	"subject": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["clientAuth"]
}`

func TestOptions(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	pub := ca.Key.Public()
	tests := []struct {
		name string
		edit func(*stepca.Options)
		want string
	}{
		{"http", func(o *stepca.Options) { o.URL = "http://127.0.0.1:9000" }, "https"},
		{"path", func(o *stepca.Options) { o.URL = ca.URL + "/x" }, "path"},
		{"no url", func(o *stepca.Options) { o.URL = "" }, "url is empty"},
		{"no roots", func(o *stepca.Options) { o.Roots = nil }, "roots are empty"},
		{"not PEM", func(o *stepca.Options) { o.Roots = []byte("hello") }, "no PEM certificate"},
		{"no provisioner", func(o *stepca.Options) { o.Provisioner = "" }, "provisioner name"},
		{"no key", func(o *stepca.Options) { o.Key = nil }, "key is missing"},
		{"public key", func(o *stepca.Options) { o.Key = &pub }, "public key"},
		{"trust domain", func(o *stepca.Options) { o.TrustDomain = "Bad Domain" }, "trust domain"},
		{"timeout", func(o *stepca.Options) { o.Timeout = time.Hour }, "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := stepca.Options{URL: ca.URL, Roots: ca.RootPEM(), Provisioner: ca.Provisioner, Key: ca.Key}
			tt.edit(&opts)
			_, err := stepca.New(opts)
			if !errors.Is(err, stepca.ErrOptions) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want ErrOptions about %q", err, tt.want)
			}
		})
	}
	t.Run("every problem at once", func(t *testing.T) {
		_, err := stepca.New(stepca.Options{URL: "http://x"})
		for _, want := range []string{"https", "roots", "provisioner name", "key"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("err = %v; want it to mention %q", err, want)
			}
		}
	})
}

func TestReadProvisionerKey(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	dir := t.TempDir()
	wrongPw := filepath.Join(dir, "wrong")
	emptyPw := filepath.Join(dir, "empty")
	os.WriteFile(wrongPw, []byte("not it\n"), 0o600)
	os.WriteFile(emptyPw, []byte("\n"), 0o600)
	pubFile := filepath.Join(dir, "pub.json")
	pubJSON, _ := ca.Key.Public().MarshalJSON()
	os.WriteFile(pubFile, pubJSON, 0o600)
	plainFile := filepath.Join(dir, "plain.json")
	plainJSON, _ := ca.Key.MarshalJSON()
	os.WriteFile(plainFile, plainJSON, 0o600)
	notKey := filepath.Join(dir, "root.pem")
	rootPEM, _ := os.ReadFile(ca.RootFile)
	os.WriteFile(notKey, rootPEM, 0o600)
	readable := filepath.Join(dir, "readable.json")
	os.WriteFile(readable, plainJSON, 0o644)

	key, err := stepca.ReadProvisionerKey(ca.KeyFile, ca.PasswordFile)
	if err != nil || key.KeyID != ca.Key.KeyID || key.IsPublic() {
		t.Fatalf("encrypted key: %v, %v", key, err)
	}
	if key, err := stepca.ReadProvisionerKey(plainFile, ""); err != nil || key.KeyID != ca.Key.KeyID {
		t.Fatalf("plain key: %v, %v", key, err)
	}
	for _, tt := range []struct{ name, key, pw, want string }{
		{"encrypted without password", ca.KeyFile, "", "encrypted"},
		{"wrong password", ca.KeyFile, wrongPw, "wrong password"},
		{"empty password file", ca.KeyFile, emptyPw, "empty"},
		{"public key", pubFile, "", "public key"},
		{"missing file", filepath.Join(dir, "nope"), "", "no such file"},
		{"not a key", notKey, "", "not a JWK"},
		{"key readable by others", readable, "", "chmod 600"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := stepca.ReadProvisionerKey(tt.key, tt.pw)
			if !errors.Is(err, stepca.ErrProvisionerKey) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want ErrProvisionerKey about %q", err, tt.want)
			}
		})
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}
