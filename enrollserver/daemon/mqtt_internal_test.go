package daemon

import (
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
)

// The broker client certificate is reissued at a handshake once half its
// lifetime has passed, so a long-lived broker connection still reconnects.
func TestRenewingCertRenewed(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	b := &renewingCert{what: "test", now: func() time.Time { return now }, issue: func() (*tls.Certificate, error) {
		return ca.IssueServiceClient(BrokerClientName, brokerClientLifetime)
	}}
	first, err := b.get()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := b.get(); again != first {
		t.Error("a fresh certificate was replaced")
	}
	now = now.Add(brokerClientLifetime/2 + time.Minute)
	renewed, err := b.get()
	if err != nil {
		t.Fatal(err)
	}
	if renewed == first || renewed.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Error("a certificate past half its lifetime was not reissued")
	}
}
