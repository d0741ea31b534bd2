package mqttapi

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/enrollservertest"
)

// TestBrokerBounds: the embedded broker keeps a departed client's session
// a minute at most (not mochi's default of 136 years: client IDs a
// bootstrap client chooses would pile up) and bounds its clients.
func TestBrokerBounds(t *testing.T) {
	c := enrollservertest.New(t, enrollserver.Config{}, nil)
	core, ca := c.Server, c.CA
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
