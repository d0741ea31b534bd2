//go:build pkcs11 && cgo

package pki_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.step.sm/crypto/kms"
	"go.step.sm/crypto/kms/apiv1"

	"github.com/edgeenroll/edgeenroll/pki"
)

// softHSM2Module is where Debian's softhsm2 package installs the module.
var softHSM2Modules = []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"}

// newSoftHSM2Token initialises a token in a fresh softhsm2 store and
// returns the PKCS#11 URI prefix of its keys (module, token and PIN).
func newSoftHSM2Token(t *testing.T) string {
	t.Helper()
	module := ""
	for _, m := range softHSM2Modules {
		if _, err := os.Stat(m); err == nil {
			module = m
			break
		}
	}
	util, err := exec.LookPath("softhsm2-util")
	if module == "" || err != nil {
		t.Skip("softhsm2 is not installed (apt-get install -y softhsm2)")
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(dir, "tokens")+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	if out, err := exec.Command(util, "--init-token", "--free", "--label", "edgeenroll-test", "--so-pin", "5678", "--pin", "1234").CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v: %s", err, out)
	}
	return "pkcs11:module-path=" + module + ";token=edgeenroll-test"
}

// createHSMKey creates a P-256 key in the token and returns its URI.
func createHSMKey(t *testing.T, token, id, label string) string {
	t.Helper()
	u := token + ";id=" + id + ";object=" + label + "?pin-value=1234"
	m, err := kms.New(context.Background(), apiv1.Options{Type: apiv1.PKCS11, URI: u})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.CreateKey(&apiv1.CreateKeyRequest{Name: u, SignatureAlgorithm: apiv1.ECDSAWithSHA256}); err != nil {
		t.Fatal(err)
	}
	return u
}

// The CA's intermediate and bundle signer keys in an HSM (softhsm2): the
// CA certifies them, signs with them through PKCS#11 (the bundle signer
// as an opaque crypto.Signer), and never holds them in a file.
func TestCAWithPKCS11Keys(t *testing.T) {
	token := newSoftHSM2Token(t)
	opts := &pki.Options{
		Now:                fixedClock(t0),
		IntermediateKeyURI: createHSMKey(t, token, "7331", "intermediate"),
		BundleSignerKeyURI: createHSMKey(t, token, "7332", "bundle-signer"),
	}
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.LoadOrCreateCA(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	checkIssuesAndSigns(t, ca)
	if err := ca.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{pki.IntermediateKeyFile, pki.BundleSignerKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s exists: %v", name, err)
		}
	}
	again, err := pki.LoadOrCreateCA(dir, opts)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	defer again.Close()
	checkIssuesAndSigns(t, again)

	// Rotation into a new HSM key.
	next := createHSMKey(t, token, "7333", "intermediate-2")
	if _, err := pki.RotateIntermediate(dir, opts, &pki.RotateOptions{IntermediateKeyURI: next, BundleSignerKeyURI: opts.BundleSignerKeyURI}); err != nil {
		t.Fatal(err)
	}
	rotated, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0), IntermediateKeyURI: next, BundleSignerKeyURI: opts.BundleSignerKeyURI})
	if err != nil {
		t.Fatal(err)
	}
	defer rotated.Close()
	checkIssuesAndSigns(t, rotated)
}
