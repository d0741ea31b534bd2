package pki_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/edgeenroll/edgeenroll/pki"
)

// writeKeyFile writes a fresh key of curve to a PEM file (mode 0600) in its
// own directory, the way an operator prepares a softkms key off the data
// directory, and returns its softkms URI.
func writeKeyFile(tb testing.TB, curve elliptic.Curve) (uri string, key *ecdsa.PrivateKey) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(tb.TempDir(), "key.pem")
	block, err := pemutil.Serialize(key)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		tb.Fatal(err)
	}
	return "softkms:path=" + path, key
}

func TestCAWithKMSKeys(t *testing.T) {
	interURI, interKey := writeKeyFile(t, elliptic.P256())
	signerURI, signerKey := writeKeyFile(t, elliptic.P256())
	opts := &pki.Options{Now: fixedClock(t0), IntermediateKeyURI: interURI, BundleSignerKeyURI: signerURI}
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.LoadOrCreateCA(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()

	// The CA certified the KMS keys and wrote no key file for them.
	if !interKey.Public().(*ecdsa.PublicKey).Equal(ca.Intermediate().PublicKey) || !signerKey.Public().(*ecdsa.PublicKey).Equal(ca.BundleSigner().PublicKey) {
		t.Fatal("the intermediate or bundle signer certificate is not for the KMS key")
	}
	for _, name := range []string{pki.IntermediateKeyFile, pki.BundleSignerKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists (%v); the key is in the KMS", name, err)
		}
	}

	// It issues and signs with them, and reloads.
	checkIssuesAndSigns(t, ca)
	again, err := pki.LoadOrCreateCA(dir, opts)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	defer again.Close()
	if !again.Intermediate().Equal(ca.Intermediate()) {
		t.Error("reloaded CA has another intermediate")
	}
	checkIssuesAndSigns(t, again)

	// Without the URIs, the key files are missing.
	if _, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0)}); !errors.Is(err, pki.ErrCAIncomplete) || !strings.Contains(err.Error(), pki.IntermediateKeyFile) {
		t.Errorf("load without URIs: %v; want ErrCAIncomplete naming %s", err, pki.IntermediateKeyFile)
	}
}

// checkIssuesAndSigns issues a device certificate and signs a bundle, and
// verifies both against the root.
func checkIssuesAndSigns(t *testing.T, ca *pki.CA) {
	t.Helper()
	id := deviceID(t.Name())
	dev := newP256(t)
	issued, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: id, PublicKey: &dev.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(issued.Chain[1])
	if _, err := issued.Leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: inter, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("device certificate: %v", err)
	}
	b, err := ca.SignBundle(pki.Bundle{DeviceID: id, Version: 1, IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), Config: []byte(`{"a":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.VerifyBundle(b, ca.RootPool(), id, t0); err != nil {
		t.Errorf("bundle: %v", err)
	}
}

func TestCAWithKMSKeysRefusals(t *testing.T) {
	goodURI, _ := writeKeyFile(t, elliptic.P256())
	p384URI, _ := writeKeyFile(t, elliptic.P384())
	openURI, _ := writeKeyFile(t, elliptic.P256())
	if err := os.Chmod(strings.TrimPrefix(openURI, "softkms:path="), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := "softkms:path=" + filepath.Join(t.TempDir(), "nope.pem")
	tests := []struct {
		name string
		opts pki.Options
		want error
		text string
	}{
		{"not a URI", pki.Options{IntermediateKeyURI: "no scheme here"}, pki.ErrOptions, "KMS URI"},
		{"unknown kms", pki.Options{IntermediateKeyURI: "vault:key"}, pki.ErrOptions, "KMS URI"},
		{"softkms without a path", pki.Options{IntermediateKeyURI: "softkms:"}, pki.ErrOptions, "names no key file"},
		{"one key for both", pki.Options{IntermediateKeyURI: goodURI, BundleSignerKeyURI: goodURI}, pki.ErrOptions, "same key"},
		{"missing key file", pki.Options{IntermediateKeyURI: missing}, pki.ErrKMS, "no such file"},
		{"key file readable by others", pki.Options{IntermediateKeyURI: openURI}, pki.ErrKeyPermissions, "chmod 600"},
		{"bundle signer not P-256", pki.Options{BundleSignerKeyURI: p384URI}, pki.ErrKMS, "P-256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			_, err := pki.LoadOrCreateCA(dir, &tt.opts)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("err = %v; want %v about %q", err, tt.want, tt.text)
			}
			// A refused creation leaves nothing behind.
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("refused creation left %d files in %s", len(entries), dir)
			}
		})
	}
}

func TestCAWithKMSKeysLoadRefusals(t *testing.T) {
	interURI, _ := writeKeyFile(t, elliptic.P256())
	otherURI, _ := writeKeyFile(t, elliptic.P256())
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0), IntermediateKeyURI: interURI})
	if err != nil {
		t.Fatal(err)
	}
	ca.Close()

	// Another key than the certified one.
	if _, err := pki.LoadOrCreateCA(dir, &pki.Options{IntermediateKeyURI: otherURI}); !errors.Is(err, pki.ErrCACorrupt) || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("other key: %v; want ErrCACorrupt", err)
	}
	// A key file next to a URI for the same key: one place only.
	other := readKey(t, filepath.Dir(strings.TrimPrefix(interURI, "softkms:path=")), "key.pem")
	writePEMKey(t, filepath.Join(dir, pki.IntermediateKeyFile), other)
	if _, err := pki.LoadOrCreateCA(dir, &pki.Options{IntermediateKeyURI: interURI}); !errors.Is(err, pki.ErrOptions) || !strings.Contains(err.Error(), "one place") {
		t.Errorf("file and URI: %v; want ErrOptions", err)
	}
}

func writePEMKey(tb testing.TB, path string, key crypto.Signer) {
	tb.Helper()
	block, err := pemutil.Serialize(key)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		tb.Fatal(err)
	}
}
