package pki_test

import (
	"crypto/x509"
	"errors"
	"path/filepath"
	"testing"

	"github.com/edgeenroll/edgeenroll/pki"
)

func TestOperatorCertificate(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueOperator("admin", 0)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(ca.Intermediate())
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("operator certificate does not verify for client auth: %v", err)
	}
	name, err := pki.OperatorFromCertificate(cert.Leaf, ca.TrustDomain())
	if err != nil || name != "admin" {
		t.Fatalf("OperatorFromCertificate = %q, %v", name, err)
	}
	if _, err := pki.DeviceIDFromCertificate(cert.Leaf, ca.TrustDomain()); err == nil {
		t.Error("an operator certificate passed as a device certificate")
	}
	if _, err := pki.OperatorFromCertificate(cert.Leaf, "other.domain"); !errors.Is(err, pki.ErrOperatorIdentity) {
		t.Errorf("other trust domain: %v", err)
	}
	for _, bad := range []string{"", "Admin", "a/b", string(make([]byte, 65))} {
		if _, err := ca.IssueOperator(bad, 0); !errors.Is(err, pki.ErrOperatorIdentity) {
			t.Errorf("IssueOperator(%q) = %v, want ErrOperatorIdentity", bad, err)
		}
	}
}
