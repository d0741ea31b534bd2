package pki_test

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/pki"
)

func TestIssueServiceClient(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.IssueServiceClient("enrolld", 0)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(ca.Intermediate())
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if c.Leaf.Subject.CommonName != "enrolld" {
		t.Errorf("CN %q", c.Leaf.Subject.CommonName)
	}
	if _, err := pki.DeviceIDFromCertificate(c.Leaf, ca.TrustDomain()); err == nil {
		t.Error("a service certificate passed as a device certificate")
	}
	if _, err := pki.OperatorFromCertificate(c.Leaf, ca.TrustDomain()); err == nil {
		t.Error("a service certificate passed as an operator certificate")
	}
	for _, bad := range []string{"", "Enrolld", "a/b", strings.Repeat("a", 64)} {
		if _, err := ca.IssueServiceClient(bad, 0); err == nil {
			t.Errorf("IssueServiceClient(%q) succeeded", bad)
		}
	}
}
