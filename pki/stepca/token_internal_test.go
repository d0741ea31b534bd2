package stepca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/pki/stepca/stepcatest"
)

// The one-time token is bound to one CSR and usable once: step-ca itself
// refuses it for another CSR and a second time.
func TestTokenIsBoundAndOneTime(t *testing.T) {
	ca := stepcatest.Start(t, nil)
	iss, err := New(Options{URL: ca.URL, Roots: ca.RootPEM(), Provisioner: ca.Provisioner, Key: ca.Key})
	if err != nil {
		t.Fatal(err)
	}
	defer iss.Close()
	id := strings.Repeat("0f", 32)
	csrA, csrB := testCSR(t, id), testCSR(t, id)
	newToken := func(csr *x509.CertificateRequest) string {
		tok, err := iss.cfg.newToken(id, []string{pki.DeviceURI(pki.DefaultTrustDomain, id).String()}, csr, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	post := func(tok string, csr *x509.CertificateRequest) error {
		body, _ := json.Marshal(signRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})), OTT: tok})
		_, err := iss.do(context.Background(), http.MethodPost, iss.cfg.signURL, body)
		return err
	}
	// A token for CSR A does not get CSR B signed (and is spent by trying).
	if err := post(newToken(csrA), csrB); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "fingerprint") {
		t.Errorf("token for CSR A with CSR B: %v; want step-ca's refusal", err)
	}
	tok := newToken(csrA)
	if err := post(tok, csrA); err != nil {
		t.Fatalf("token with its own CSR: %v", err)
	}
	if err := post(tok, csrA); !errors.Is(err, ErrProvisioner) {
		t.Errorf("the same token again: %v; want step-ca's 401", err)
	}
}

func testCSR(t *testing.T, cn string) *x509.CertificateRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
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
