// Package enrollservertest builds enrollment server cores for tests: an
// embedded CA and a bbolt store in a temporary directory behind
// enrollserver.New, the setup most server-facing tests start from.
//
// It imports only enrollserver, its store, pki and the standard library,
// so any test of a package above enrollserver (including its own internal
// tests, such as mqttapi's) may use it without an import cycle.
package enrollservertest

import (
	"path/filepath"
	"testing"

	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Core is an enrollment server core with what it was built from.
type Core struct {
	Server *enrollserver.Server
	// CA is the CA the server signs with: cfg.CA if New was given one,
	// else the one New created.
	CA *pki.CA
	// Store is the bbolt store New opened, or nil if cfg.Store was set.
	Store *store.Bolt
	// Dir is the temporary directory holding ca/ (when New created the
	// CA) and enroll.db (when New opened the store).
	Dir string
}

// New builds a Core for tb in a new tb.TempDir(): unless cfg.CA is set, a
// new CA in <dir>/ca; unless cfg.Store is set, a bbolt store at
// <dir>/enroll.db opened with storeOpts (nil: the store's defaults) and
// closed at tb's cleanup; then enrollserver.New(cfg) with those filled in.
// Every other field of cfg is passed as given. New fails tb on any error.
func New(tb testing.TB, cfg enrollserver.Config, storeOpts *store.Options) *Core {
	tb.Helper()
	c := &Core{Dir: tb.TempDir()}
	if cfg.CA == nil {
		ca, err := pki.LoadOrCreateCA(filepath.Join(c.Dir, "ca"), nil)
		if err != nil {
			tb.Fatal(err)
		}
		cfg.CA = ca
	}
	c.CA = cfg.CA
	if cfg.Store == nil {
		st, err := store.Open(filepath.Join(c.Dir, "enroll.db"), storeOpts)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { st.Close() })
		c.Store = st
		cfg.Store = st
	}
	srv, err := enrollserver.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	c.Server = srv
	return c
}
