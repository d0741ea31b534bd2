package pki_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
)

func TestOperatorCertificate(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(ca.Intermediate())
	for _, role := range pki.Roles() {
		t.Run(string(role), func(t *testing.T) {
			cert, err := ca.IssueOperator(role, "alice", 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("operator certificate does not verify for client auth: %v", err)
			}
			op, err := pki.OperatorFromCertificate(cert.Leaf, ca.TrustDomain())
			if err != nil || op.Name != "alice" || op.Role != role {
				t.Fatalf("OperatorFromCertificate = %+v, %v; want alice as %s", op, err, role)
			}
			if got, want := cert.Leaf.URIs[0].String(), "spiffe://"+ca.TrustDomain()+"/operator/"+string(role)+"/alice"; got != want {
				t.Errorf("URI SAN %s, want %s", got, want)
			}
			if _, err := pki.DeviceIDFromCertificate(cert.Leaf, ca.TrustDomain()); err == nil {
				t.Error("an operator certificate passed as a device certificate")
			}
			if _, err := pki.OperatorFromCertificate(cert.Leaf, "other.domain"); !errors.Is(err, pki.ErrOperatorIdentity) {
				t.Errorf("other trust domain: %v", err)
			}
		})
	}
	for _, bad := range []string{"", "Admin", "a/b", string(make([]byte, 65))} {
		if _, err := ca.IssueOperator(pki.RoleViewer, bad, 0); !errors.Is(err, pki.ErrOperatorIdentity) {
			t.Errorf("IssueOperator(%q) = %v, want ErrOperatorIdentity", bad, err)
		}
	}
	if _, err := ca.IssueOperator("root", "bob", 0); !errors.Is(err, pki.ErrOperatorIdentity) {
		t.Errorf("unknown role: %v, want ErrOperatorIdentity", err)
	}
}

// TestOperatorFromCertificateRefusals feeds URI SANs that must not name an
// operator.
func TestOperatorFromCertificateRefusals(t *testing.T) {
	const td = "edgeenroll.local"
	for _, tt := range []struct{ name, uri string }{
		{"legacy form without role", "spiffe://" + td + "/operator/alice"},
		{"unknown role", "spiffe://" + td + "/operator/root/alice"},
		{"extra path segment", "spiffe://" + td + "/operator/admin/alice/x"},
		{"upper-case name", "spiffe://" + td + "/operator/admin/Alice"},
		{"device URI", "spiffe://" + td + "/device/" + deviceID("x")},
		{"other scheme", "https://" + td + "/operator/admin/alice"},
		{"query", "spiffe://" + td + "/operator/admin/alice?x=1"},
		{"port", "spiffe://" + td + ":1/operator/admin/alice"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.uri)
			if err != nil {
				t.Fatal(err)
			}
			c := &x509.Certificate{Subject: pkix.Name{CommonName: "x"}, URIs: []*url.URL{u}}
			if op, err := pki.OperatorFromCertificate(c, td); !errors.Is(err, pki.ErrOperatorIdentity) {
				t.Errorf("OperatorFromCertificate(%s) = %+v, %v; want ErrOperatorIdentity", tt.uri, op, err)
			}
		})
	}
}

func TestSignCRL(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	revoked := []pki.RevokedCertificate{
		{Serial: big.NewInt(0x1234), RevokedAt: now.Add(-time.Minute), ReasonCode: pki.ReasonKeyCompromise},
		{Serial: big.NewInt(0xabcd), RevokedAt: now, ReasonCode: pki.ReasonCessationOfOperation},
	}
	der, err := ca.SignCRL(pki.CRLRequest{Number: 7, ThisUpdate: now, NextUpdate: now.Add(time.Hour), Revoked: revoked})
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(ca.Intermediate()); err != nil {
		t.Errorf("crl is not signed by the intermediate: %v", err)
	}
	if crl.Number.Int64() != 7 || !crl.NextUpdate.Equal(now.Add(time.Hour)) || len(crl.RevokedCertificateEntries) != 2 {
		t.Fatalf("crl = number %v, next update %s, %d entries", crl.Number, crl.NextUpdate, len(crl.RevokedCertificateEntries))
	}
	if e := crl.RevokedCertificateEntries[0]; e.SerialNumber.Int64() != 0x1234 || e.ReasonCode != pki.ReasonKeyCompromise {
		t.Errorf("entry 0 = %+v", e)
	}
	for _, bad := range []pki.CRLRequest{
		{Number: 0, ThisUpdate: now, NextUpdate: now.Add(time.Hour)},
		{Number: 1, ThisUpdate: now, NextUpdate: now},
		{Number: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour), Revoked: []pki.RevokedCertificate{{RevokedAt: now}}},
		{Number: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour), Revoked: []pki.RevokedCertificate{{Serial: big.NewInt(1), RevokedAt: now, ReasonCode: 7}}},
		{Number: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour), Revoked: []pki.RevokedCertificate{{Serial: big.NewInt(1), RevokedAt: now, ReasonCode: 8}}},
		{Number: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour), Revoked: []pki.RevokedCertificate{{Serial: big.NewInt(1), RevokedAt: now, ReasonCode: -1}}},
		{Number: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour), Revoked: []pki.RevokedCertificate{{Serial: big.NewInt(1), RevokedAt: now, ReasonCode: 99}}},
	} {
		if _, err := ca.SignCRL(bad); !errors.Is(err, pki.ErrCRL) {
			t.Errorf("SignCRL(%+v) = %v, want ErrCRL", bad, err)
		}
	}
}
