package daemon

import (
	"crypto/tls"
	"os"
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

// TestWriteBrokerCredentialsNeedsCA: a data dir without a CA (a mistyped
// --data-dir) is refused, and no CA is made there.
func TestWriteBrokerCredentialsNeedsCA(t *testing.T) {
	dataDir := t.TempDir()
	if err := WriteBrokerCredentials(dataDir, t.TempDir(), []string{"mqtt.example"}, time.Hour, IssuerConfig{}); err == nil {
		t.Fatal("broker credentials issued from a data dir without a CA")
	}
	if _, err := os.Stat(RootCertPath(dataDir)); !os.IsNotExist(err) {
		t.Errorf("a CA was created in the mistyped data dir: %v", err)
	}
	if _, _, err := InitCA(dataDir, "", IssuerConfig{}); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := WriteBrokerCredentials(dataDir, out, []string{"mqtt.example"}, time.Hour, IssuerConfig{}); err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "broker.key")); err != nil {
		t.Error(err)
	}
}
