package mqttapi

import (
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// TestBrokerBounds: the embedded broker keeps a departed client's session
// a minute at most (not mochi's default of 136 years: client IDs a
// bootstrap client chooses would pile up) and bounds its clients.
func TestBrokerBounds(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "enroll.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	core, err := enrollserver.New(enrollserver.Config{Store: st, CA: ca})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer([]string{"localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(core, Options{Listen: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{*cert}, ClientCAs: ca.RootPool()}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	caps := b.srv.Options.Capabilities
	if caps.MaximumSessionExpiryInterval != brokerSessionExpiry || caps.MaximumClients != maxBrokerClients {
		t.Errorf("session expiry %d s, clients %d; want %d s, %d", caps.MaximumSessionExpiryInterval, caps.MaximumClients, brokerSessionExpiry, maxBrokerClients)
	}
}
