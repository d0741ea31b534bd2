package pki_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
)

var allFiles = []string{
	pki.RootCertFile, pki.RootKeyFile,
	pki.IntermediateCertFile, pki.IntermediateKeyFile,
	pki.BundleSignerCertFile, pki.BundleSignerKeyFile,
}

var keyFiles = []string{pki.RootKeyFile, pki.IntermediateKeyFile, pki.BundleSignerKeyFile}

func TestLoadOrCreateCARoundTrip(t *testing.T) {
	ca, dir := newCA(t, t0)

	again, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0.Add(time.Hour))})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if !again.Root().Equal(ca.Root()) || !again.Intermediate().Equal(ca.Intermediate()) || !again.BundleSigner().Equal(ca.BundleSigner()) {
		t.Fatal("reloaded CA has different certificates")
	}
	if got := again.TrustDomain(); got != pki.DefaultTrustDomain {
		t.Errorf("TrustDomain() = %q, want %q", got, pki.DefaultTrustDomain)
	}

	// The reloaded CA issues with the same keys: its output verifies
	// against the first CA's root.
	id := deviceID("round trip")
	bundle, err := again.SignBundle(pki.Bundle{DeviceID: id, Version: 1, IssuedAt: t0, ExpiresAt: t0.Add(2 * time.Hour), Config: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.VerifyBundle(bundle, ca.RootPool(), id, t0.Add(time.Hour)); err != nil {
		t.Fatalf("bundle from reloaded CA: %v", err)
	}
}

func TestCreatedCAProfiles(t *testing.T) {
	ca, _ := newCA(t, t0)
	root, inter, signer := ca.Root(), ca.Intermediate(), ca.BundleSigner()

	if !root.IsCA || root.MaxPathLen != 1 || root.CheckSignatureFrom(root) != nil {
		t.Errorf("root: IsCA=%v MaxPathLen=%d, want a self-signed CA with path length 1", root.IsCA, root.MaxPathLen)
	}
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero || inter.CheckSignatureFrom(root) != nil {
		t.Errorf("intermediate: IsCA=%v MaxPathLen=%d, want a CA with path length 0 signed by the root", inter.IsCA, inter.MaxPathLen)
	}
	if signer.IsCA || signer.CheckSignatureFrom(inter) != nil || len(signer.ExtKeyUsage) != 1 || signer.ExtKeyUsage[0] != x509.ExtKeyUsageCodeSigning {
		t.Errorf("bundle signer: IsCA=%v EKU=%v, want a code-signing leaf signed by the intermediate", signer.IsCA, signer.ExtKeyUsage)
	}
	if want := t0.Add(pki.DefaultRootLifetime); !root.NotAfter.Equal(want) {
		t.Errorf("root NotAfter = %s, want %s", root.NotAfter, want)
	}
	if want := t0.Add(pki.DefaultIntermediateLifetime); !inter.NotAfter.Equal(want) || !signer.NotAfter.Equal(want) {
		t.Errorf("intermediate/signer NotAfter = %s/%s, want %s", inter.NotAfter, signer.NotAfter, want)
	}
	if want := t0.Add(-pki.Backdate); !root.NotBefore.Equal(want) {
		t.Errorf("root NotBefore = %s, want %s", root.NotBefore, want)
	}
	if ca.RootPool() == ca.RootPool() {
		t.Error("RootPool returned the same pool twice; want a fresh pool")
	}
}

func TestCAFileModes(t *testing.T) {
	_, dir := newCA(t, t0)

	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("dir mode = %#o, want 0700", got)
	}
	for _, name := range allFiles {
		want := os.FileMode(0o644)
		if strings.HasSuffix(name, ".key") {
			want = 0o600
		}
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %#o, want %#o", name, got, want)
		}
	}
	// No temporary files are left behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(allFiles) {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("dir holds %v, want exactly the %d CA files", names, len(allFiles))
	}
}

func TestLoadRefusesOpenKeyPermissions(t *testing.T) {
	for _, name := range keyFiles {
		for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620} {
			t.Run(fmt.Sprintf("%s/%#o", name, mode), func(t *testing.T) {
				_, dir := newCA(t, t0)
				path := filepath.Join(dir, name)
				if err := os.Chmod(path, mode); err != nil {
					t.Fatal(err)
				}
				_, err := pki.LoadOrCreateCA(dir, nil)
				if !errors.Is(err, pki.ErrKeyPermissions) {
					t.Fatalf("err = %v, want ErrKeyPermissions", err)
				}
				if !strings.Contains(err.Error(), "chmod 600 "+path) {
					t.Errorf("error %q does not say to chmod 600 the file", err)
				}
			})
		}
	}
}

func TestLoadRefusesIncompleteDir(t *testing.T) {
	for _, name := range allFiles {
		if name == pki.RootKeyFile {
			continue // may be offline: TestRootKeyOffline
		}
		t.Run(name, func(t *testing.T) {
			_, dir := newCA(t, t0)
			before := readDir(t, dir)
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			_, err := pki.LoadOrCreateCA(dir, nil)
			if !errors.Is(err, pki.ErrCAIncomplete) {
				t.Fatalf("err = %v, want ErrCAIncomplete", err)
			}
			if !strings.Contains(err.Error(), "missing "+name) {
				t.Errorf("error %q does not name the missing file %s", err, name)
			}
			// Nothing was regenerated: every remaining file is unchanged.
			after := readDir(t, dir)
			for n, data := range after {
				if before[n] != data {
					t.Errorf("%s changed", n)
				}
			}
			if _, ok := after[name]; ok {
				t.Errorf("%s was recreated", name)
			}
		})
	}
}

func readDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, name := range allFiles {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err == nil {
			out[name] = string(data)
		}
	}
	return out
}

func TestLoadRefusesMismatchedFiles(t *testing.T) {
	for _, name := range allFiles {
		t.Run(name, func(t *testing.T) {
			_, dir := newCA(t, t0)
			_, other := newCA(t, t0)
			data, err := os.ReadFile(filepath.Join(other, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := pki.LoadOrCreateCA(dir, nil); !errors.Is(err, pki.ErrCACorrupt) {
				t.Fatalf("err = %v, want ErrCACorrupt", err)
			}
		})
	}
	t.Run("garbage", func(t *testing.T) {
		_, dir := newCA(t, t0)
		if err := os.WriteFile(filepath.Join(dir, pki.IntermediateKeyFile), []byte("not pem"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := pki.LoadOrCreateCA(dir, nil); !errors.Is(err, pki.ErrCACorrupt) {
			t.Fatalf("err = %v, want ErrCACorrupt", err)
		}
	})
}

func TestLoadOrCreateCAOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    *pki.Options
		wantErr error
	}{
		{"nil is defaults", nil, nil},
		{"zero fields are defaults", &pki.Options{}, nil},
		{"custom trust domain", &pki.Options{TrustDomain: "factory-7.example.com"}, nil},
		{"uppercase trust domain", &pki.Options{TrustDomain: "Example.com"}, pki.ErrTrustDomain},
		{"trust domain with port", &pki.Options{TrustDomain: "example.com:443"}, pki.ErrOptions},
		{"negative root lifetime", &pki.Options{RootLifetime: -time.Hour}, pki.ErrOptions},
		{"intermediate outlives root", &pki.Options{RootLifetime: 24 * time.Hour, IntermediateLifetime: 48 * time.Hour}, pki.ErrOptions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), tt.opts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && tt.opts != nil && tt.opts.TrustDomain != "" && ca.TrustDomain() != tt.opts.TrustDomain {
				t.Errorf("TrustDomain() = %q, want %q", ca.TrustDomain(), tt.opts.TrustDomain)
			}
		})
	}
	if _, err := pki.LoadOrCreateCA("", nil); !errors.Is(err, pki.ErrOptions) {
		t.Errorf("empty dir: err = %v, want ErrOptions", err)
	}
}

func TestCreateInExistingEmptyDir(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.LoadOrCreateCA(dir, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadOrCreateCA(dir, nil); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

func TestCAFormatHidesKeys(t *testing.T) {
	ca, dir := newCA(t, t0)
	var secrets []string // each private scalar, in decimal and hex
	for _, name := range keyFiles {
		d := readKey(t, dir, name).(*ecdsa.PrivateKey).D //nolint:staticcheck // the value to look for
		secrets = append(secrets, d.String(), d.Text(16))
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d", "%x"} {
		out := fmt.Sprintf(verb, ca)
		if !strings.HasPrefix(out, "pki.CA{") {
			t.Errorf("%s printed %.80q, want the String form", verb, out)
		}
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("%s printed a private key", verb)
			}
		}
	}
}

// TestConcurrentCreation starts several processes' worth of LoadOrCreateCA
// on one fresh directory. Files are published without replacing existing
// ones, so exactly one CA ends up on disk: every caller either gets that CA
// or fails with ErrCAIncomplete, and never two different roots.
func TestConcurrentCreation(t *testing.T) {
	for round := range 10 {
		dir := filepath.Join(t.TempDir(), "ca")
		roots := make(chan *x509.Certificate, 4)
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				ca, err := pki.LoadOrCreateCA(dir, nil)
				switch {
				case err == nil:
					roots <- ca.Root()
				case !errors.Is(err, pki.ErrCAIncomplete):
					t.Errorf("round %d: err = %v, want nil or ErrCAIncomplete", round, err)
				}
			})
		}
		wg.Wait()
		close(roots)

		final, err := pki.LoadOrCreateCA(dir, nil)
		if err != nil {
			t.Fatalf("round %d: reload: %v", round, err)
		}
		for root := range roots {
			if !root.Equal(final.Root()) {
				t.Fatalf("round %d: a caller got a root that is not the one on disk", round)
			}
		}
	}
}
