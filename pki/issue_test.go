package pki_test

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
)

func TestIssueDevice(t *testing.T) {
	ca, _ := newCA(t, t0)
	id := deviceID("device one")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pub  crypto.PublicKey
	}{
		{"ecdsa P-256", &newP256(t).PublicKey},
		{"ecdsa P-384", &p384.PublicKey},
		{"rsa 2048", &rsaKey.PublicKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: id, PublicKey: tt.pub})
			if err != nil {
				t.Fatal(err)
			}
			leaf := got.Leaf
			if len(got.Chain) != 2 || got.Chain[0] != leaf || !got.Chain[1].Equal(ca.Intermediate()) {
				t.Fatalf("chain = %d certificates, want leaf then intermediate", len(got.Chain))
			}
			// It verifies as a TLS client certificate, and as nothing else.
			verify := func(usage x509.ExtKeyUsage) error {
				inter := x509.NewCertPool()
				inter.AddCert(got.Chain[1])
				_, err := leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: inter, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{usage}})
				return err
			}
			if err := verify(x509.ExtKeyUsageClientAuth); err != nil {
				t.Errorf("verify for client auth: %v", err)
			}
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageCodeSigning} {
				if verify(usage) == nil {
					t.Errorf("device certificate verifies for usage %v", usage)
				}
			}
			if leaf.Subject.CommonName != id {
				t.Errorf("CN = %q, want %q", leaf.Subject.CommonName, id)
			}
			if want := pki.DeviceURI(pki.DefaultTrustDomain, id).String(); len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
				t.Errorf("URIs = %v, want [%s]", leaf.URIs, want)
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("KeyUsage = %v, want DigitalSignature", leaf.KeyUsage)
			}
			if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(leaf.UnknownExtKeyUsage) != 0 {
				t.Errorf("ExtKeyUsage = %v, want [ClientAuth]", leaf.ExtKeyUsage)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Error("want basic constraints CA:FALSE")
			}
			if !leaf.NotBefore.Equal(t0.Add(-pki.Backdate)) || !leaf.NotAfter.Equal(t0.Add(pki.DefaultLeafLifetime)) {
				t.Errorf("validity = %s..%s, want now-1m..now+24h", leaf.NotBefore, leaf.NotAfter)
			}
			if got, err := pki.DeviceIDFromCertificate(leaf, ca.TrustDomain()); err != nil || got != id {
				t.Errorf("DeviceIDFromCertificate = %q, %v; want %q", got, err, id)
			}
		})
	}
}

func TestIssueDeviceSerials(t *testing.T) {
	ca, _ := newCA(t, t0)
	pub := &newP256(t).PublicKey
	seen := map[string]bool{}
	var long int
	for range 32 {
		got, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: deviceID("serials"), PublicKey: pub})
		if err != nil {
			t.Fatal(err)
		}
		sn := got.Leaf.SerialNumber
		if sn.Sign() <= 0 || seen[sn.String()] {
			t.Fatalf("serial %s is not positive and unique", sn)
		}
		seen[sn.String()] = true
		if sn.BitLen() > 120 {
			long++
		}
	}
	// A 128-bit random serial is over 120 bits long with probability
	// 1-2^-8; with 32 draws, at least 28 is a safe bound.
	if long < 28 {
		t.Errorf("%d of 32 serials are over 120 bits long; want 128-bit random serials", long)
	}
}

func TestIssueDeviceLifetime(t *testing.T) {
	ca, _ := newCA(t, t0)
	pub := &newP256(t).PublicKey
	tests := []struct {
		name     string
		lifetime time.Duration
		want     time.Duration // of NotAfter - now, if no error
		wantErr  error
	}{
		{"default", 0, pki.DefaultLeafLifetime, nil},
		{"minimum", pki.MinLeafLifetime, pki.MinLeafLifetime, nil},
		{"maximum", pki.MaxLeafLifetime, pki.MaxLeafLifetime, nil},
		{"too short", pki.MinLeafLifetime - time.Second, 0, pki.ErrLifetime},
		{"too long", pki.MaxLeafLifetime + time.Second, 0, pki.ErrLifetime},
		{"negative", -time.Hour, 0, pki.ErrLifetime},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: deviceID("lifetime"), PublicKey: pub, Lifetime: tt.lifetime})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && !got.Leaf.NotAfter.Equal(t0.Add(tt.want)) {
				t.Errorf("NotAfter = %s, want now+%s", got.Leaf.NotAfter, tt.want)
			}
		})
	}
}

func TestIssueDeviceNeverOutlivesIntermediate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0), IntermediateLifetime: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	req := pki.DeviceCertRequest{DeviceID: deviceID("clamp"), PublicKey: &newP256(t).PublicKey, Lifetime: pki.MaxLeafLifetime}
	got, err := ca.IssueDevice(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Leaf.NotAfter.Equal(ca.Intermediate().NotAfter) {
		t.Errorf("NotAfter = %s, want the intermediate's %s", got.Leaf.NotAfter, ca.Intermediate().NotAfter)
	}

	// Outside the intermediate's validity, or within MinLeafLifetime of its
	// end, issuance stops.
	end := ca.Intermediate().NotAfter
	for _, now := range []time.Time{end.Add(-time.Minute), end, end.Add(time.Hour), t0.Add(-time.Hour)} {
		late, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(now)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := late.IssueDevice(context.Background(), req); !errors.Is(err, pki.ErrCAExpired) {
			t.Errorf("IssueDevice at %s: err = %v, want ErrCAExpired", now, err)
		}
		if _, err := late.IssueServer([]string{"localhost"}, 0); !errors.Is(err, pki.ErrCAExpired) {
			t.Errorf("IssueServer at %s: err = %v, want ErrCAExpired", now, err)
		}
	}
}

func TestIssueDeviceRefusesBadRequests(t *testing.T) {
	ca, _ := newCA(t, t0)
	good := deviceID("good")
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	offCurve := &ecdsa.PublicKey{Curve: elliptic.P256(), X: big.NewInt(1), Y: big.NewInt(1)}
	evenE := &rsa.PublicKey{N: newRSA2048Modulus(t), E: 65536}
	p256 := &newP256(t).PublicKey

	tests := []struct {
		name    string
		req     pki.DeviceCertRequest
		wantErr error
	}{
		{"empty device id", pki.DeviceCertRequest{DeviceID: "", PublicKey: p256}, pki.ErrDeviceID},
		{"uppercase device id", pki.DeviceCertRequest{DeviceID: "AB" + good[2:], PublicKey: p256}, pki.ErrDeviceID},
		{"short device id", pki.DeviceCertRequest{DeviceID: good[1:], PublicKey: p256}, pki.ErrDeviceID},
		{"long device id", pki.DeviceCertRequest{DeviceID: good + "0", PublicKey: p256}, pki.ErrDeviceID},
		{"non-hex device id", pki.DeviceCertRequest{DeviceID: "g" + good[1:], PublicKey: p256}, pki.ErrDeviceID},
		{"path in device id", pki.DeviceCertRequest{DeviceID: "../" + good[3:], PublicKey: p256}, pki.ErrDeviceID},
		{"rsa 1024", pki.DeviceCertRequest{DeviceID: good, PublicKey: &rsa1024.PublicKey}, pki.ErrPublicKey},
		{"rsa even exponent", pki.DeviceCertRequest{DeviceID: good, PublicKey: evenE}, pki.ErrPublicKey},
		{"ecdsa P-224", pki.DeviceCertRequest{DeviceID: good, PublicKey: &p224.PublicKey}, pki.ErrPublicKey},
		{"ecdsa point off curve", pki.DeviceCertRequest{DeviceID: good, PublicKey: offCurve}, pki.ErrPublicKey},
		{"empty ecdsa key", pki.DeviceCertRequest{DeviceID: good, PublicKey: &ecdsa.PublicKey{Curve: elliptic.P256()}}, pki.ErrPublicKey},
		{"nil ecdsa pointer", pki.DeviceCertRequest{DeviceID: good, PublicKey: (*ecdsa.PublicKey)(nil)}, pki.ErrPublicKey},
		{"ed25519", pki.DeviceCertRequest{DeviceID: good, PublicKey: edPub}, pki.ErrPublicKey},
		{"private key instead of public", pki.DeviceCertRequest{DeviceID: good, PublicKey: newP256(t)}, pki.ErrPublicKey},
		{"no key", pki.DeviceCertRequest{DeviceID: good}, pki.ErrPublicKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.IssueDevice(context.Background(), tt.req)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != nil {
				t.Error("got a certificate with an error")
			}
		})
	}

	t.Run("canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := ca.IssueDevice(ctx, pki.DeviceCertRequest{DeviceID: good, PublicKey: p256}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

func newRSA2048Modulus(t *testing.T) *big.Int {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k.N
}

func TestIssueDeviceConcurrent(t *testing.T) {
	ca, _ := newCA(t, t0)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			pub := &newP256(t).PublicKey
			_, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: deviceID(string(rune('a' + i))), PublicKey: pub})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestIssueServer(t *testing.T) {
	ca, _ := newCA(t, t0)
	cert, err := ca.IssueServer([]string{"enroll.example.com", "localhost", "127.0.0.1", "::1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if len(cert.Certificate) != 2 || !leaf.Equal(mustParse(t, cert.Certificate[0])) || !ca.Intermediate().Equal(mustParse(t, cert.Certificate[1])) {
		t.Fatal("chain is not leaf, intermediate")
	}
	if k, ok := cert.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() || !k.PublicKey.Equal(leaf.PublicKey) {
		t.Fatalf("private key is %T, want the leaf's ECDSA P-256 key", cert.PrivateKey)
	}
	if !leaf.NotAfter.Equal(t0.Add(pki.DefaultServerLifetime)) {
		t.Errorf("NotAfter = %s, want now+%s", leaf.NotAfter, pki.DefaultServerLifetime)
	}
	inter := x509.NewCertPool()
	inter.AddCert(ca.Intermediate())
	for _, host := range []string{"enroll.example.com", "localhost", "127.0.0.1", "::1"} {
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: ca.RootPool(), Intermediates: inter, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: inter, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("server certificate verifies for client auth")
	}
	if _, err := pki.DeviceIDFromCertificate(leaf, ca.TrustDomain()); !errors.Is(err, pki.ErrDeviceIdentity) {
		t.Errorf("server certificate has a device identity: %v", err)
	}
}

func TestIssueServerRefusesBadRequests(t *testing.T) {
	ca, _ := newCA(t, t0)
	tests := []struct {
		name     string
		hosts    []string
		lifetime time.Duration
		wantErr  error
	}{
		{"no hosts", nil, 0, pki.ErrHosts},
		{"empty host", []string{""}, 0, pki.ErrHosts},
		{"url", []string{"https://enroll.example.com"}, 0, pki.ErrHosts},
		{"host with port", []string{"localhost:8443"}, 0, pki.ErrHosts},
		{"space", []string{"enroll example.com"}, 0, pki.ErrHosts},
		{"empty label", []string{"enroll..example.com"}, 0, pki.ErrHosts},
		{"leading hyphen", []string{"-enroll.example.com"}, 0, pki.ErrHosts},
		{"too many hosts", make([]string, pki.MaxServerHosts+1), 0, pki.ErrHosts},
		{"lifetime too short", []string{"localhost"}, time.Second, pki.ErrLifetime},
		{"lifetime too long", []string{"localhost"}, pki.MaxLeafLifetime + time.Hour, pki.ErrLifetime},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ca.IssueServer(tt.hosts, tt.lifetime); !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMutualTLS runs real TLS on loopback: the server presents an
// IssueServer certificate, the device an IssueDevice certificate, each side
// trusts only RootPool, and the server reads the device ID from the verified
// peer certificate.
func TestMutualTLS(t *testing.T) {
	ca, _ := newCA(t, time.Now())
	serverCert, err := ca.IssueServer([]string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	id := deviceID("tls device")
	deviceKey := newP256(t)
	issued, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: id, PublicKey: &deviceKey.PublicKey})
	if err != nil {
		t.Fatal(err)
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{*serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.RootPool(),
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	serverErr := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer conn.Close()
		tc := conn.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			serverErr <- err
			return
		}
		got, err := pki.DeviceIDFromCertificate(tc.ConnectionState().PeerCertificates[0], ca.TrustDomain())
		if err != nil {
			serverErr <- err
			return
		}
		_, err = tc.Write([]byte(got + "\n"))
		serverErr <- err
	}()

	var chain [][]byte
	for _, c := range issued.Chain {
		chain = append(chain, c.Raw)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{
		RootCAs:      ca.RootPool(),
		Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: deviceKey}},
		MinVersion:   tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the server's answer: %v (server: %v)", err, <-serverErr)
	}
	if err := <-serverErr; err != nil {
		t.Fatal(err)
	}
	if line != id+"\n" {
		t.Errorf("server saw device %q, want %q", line, id)
	}
}
