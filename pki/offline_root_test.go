package pki_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
)

// TestRootKeyOffline: the root key can be taken off the server: the CA
// loads and issues without it, a rotation says to put it back, and with
// it back the rotation works.
func TestRootKeyOffline(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.LoadOrCreateCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ca.Close()
	offline := filepath.Join(t.TempDir(), "root_ca.key")
	if err := os.Rename(filepath.Join(dir, pki.RootKeyFile), offline); err != nil {
		t.Fatal(err)
	}
	ca, err = pki.LoadOrCreateCA(dir, nil)
	if err != nil {
		t.Fatalf("loading with the root key offline: %v", err)
	}
	if _, err := ca.IssueServer([]string{"enroll.example"}, time.Hour); err != nil {
		t.Errorf("issuing with the root key offline: %v", err)
	}
	ca.Close()
	_, err = pki.RotateIntermediate(dir, nil, nil)
	if !errors.Is(err, pki.ErrCAIncomplete) || !strings.Contains(err.Error(), "offline") {
		t.Fatalf("rotation with the root key offline: %v, want ErrCAIncomplete saying it is offline", err)
	}
	if err := os.Rename(offline, filepath.Join(dir, pki.RootKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.RotateIntermediate(dir, nil, nil); err != nil {
		t.Errorf("rotation with the root key back: %v", err)
	}
	// Any other file missing is still an incomplete CA.
	os.Remove(filepath.Join(dir, pki.IntermediateKeyFile))
	if _, err := pki.LoadOrCreateCA(dir, nil); !errors.Is(err, pki.ErrCAIncomplete) {
		t.Errorf("loading without the intermediate key: %v, want ErrCAIncomplete", err)
	}
}
