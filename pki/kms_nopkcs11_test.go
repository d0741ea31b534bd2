//go:build !pkcs11

package pki_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/pki"
)

// Without -tags pkcs11 an HSM URI is refused with what to do.
func TestPKCS11NotBuiltIn(t *testing.T) {
	_, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), &pki.Options{
		IntermediateKeyURI: "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=t;id=01?pin-value=1234",
	})
	if !errors.Is(err, pki.ErrKMS) || !strings.Contains(err.Error(), "-tags pkcs11") {
		t.Fatalf("err = %v; want ErrKMS naming -tags pkcs11", err)
	}
	if strings.Contains(err.Error(), "1234") {
		t.Errorf("the error shows the PIN: %v", err)
	}
}
