package tpmsim_test

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/tpmsim"
)

const testSeed = 42

// openTPM opens the process's one simulator, skipping without cgo.
func openTPM(t *testing.T, seed int64) *tpmsim.TPM {
	t.Helper()
	tpm, err := tpmsim.Open(seed)
	if errors.Is(err, tpmsim.ErrCgoRequired) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatalf("Open(%d): %v", seed, err)
	}
	return tpm
}

// rsaEK returns the TPM's RSA EK as go-attestation sees it.
func rsaEK(t *testing.T, tpm *tpmsim.TPM) goattest.EK {
	t.Helper()
	at, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: tpm})
	if err != nil {
		t.Fatalf("OpenTPM: %v", err)
	}
	eks, err := at.EKs()
	if err != nil {
		t.Fatalf("EKs: %v", err)
	}
	if len(eks) == 0 {
		t.Fatal("EKs: none")
	}
	return eks[0]
}

func equalKeys(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func TestProvisionEKCertificate(t *testing.T) {
	tpm := openTPM(t, testSeed)
	defer tpm.Close()

	before := rsaEK(t, tpm)
	if before.Certificate != nil {
		t.Fatal("fresh simulator already has an EK certificate")
	}
	m, err := tpmsim.NewManufacturer("test manufacturer")
	if err != nil {
		t.Fatal(err)
	}
	der, err := m.IssueEKCertificate(before.Public)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpmsim.ProvisionEKCertificate(tpm, der); err != nil {
		t.Fatalf("ProvisionEKCertificate: %v", err)
	}
	// Idempotent: a second provisioning replaces the index.
	der2, err := m.IssueEKCertificate(before.Public)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpmsim.ProvisionEKCertificate(tpm, der2); err != nil {
		t.Fatalf("ProvisionEKCertificate again: %v", err)
	}

	after := rsaEK(t, tpm)
	if after.Certificate == nil {
		t.Fatal("EKs()[0].Certificate is nil after provisioning")
	}
	if string(after.Certificate.Raw) != string(der2) {
		t.Error("EK certificate read from NV differs from the one written")
	}
	if !equalKeys(after.Certificate.PublicKey, before.Public) {
		t.Error("EK certificate public key differs from the EK")
	}
	if !equalKeys(after.Public, before.Public) {
		t.Error("EK public key changed after provisioning")
	}
	if err := after.Certificate.CheckSignatureFrom(m.Certificate); err != nil {
		t.Errorf("EK certificate not signed by the manufacturer: %v", err)
	}
	if len(after.Certificate.Subject.Names) != 0 {
		t.Errorf("EK certificate subject = %q, want empty", after.Certificate.Subject)
	}
	// The TCG subjectAltName is critical and holds only a directoryName,
	// which crypto/x509 leaves unhandled: verifiers must handle it.
	if len(after.Certificate.UnhandledCriticalExtensions) != 1 || !after.Certificate.UnhandledCriticalExtensions[0].Equal([]int{2, 5, 29, 17}) {
		t.Errorf("unhandled critical extensions = %v, want [2.5.29.17]", after.Certificate.UnhandledCriticalExtensions)
	}
	if len(after.Certificate.UnknownExtKeyUsage) != 1 || !after.Certificate.UnknownExtKeyUsage[0].Equal(tpmsim.OIDEKCertificate) {
		t.Errorf("EKU = %v, want [%v]", after.Certificate.UnknownExtKeyUsage, tpmsim.OIDEKCertificate)
	}

	// NV survives a TPM reset (reboot).
	if err := tpm.Reset(); err != nil {
		t.Fatal(err)
	}
	if rsaEK(t, tpm).Certificate == nil {
		t.Error("EK certificate lost across Reset")
	}
}

func TestFixedSeedIsStable(t *testing.T) {
	first := openTPM(t, testSeed)
	ek1 := rsaEK(t, first).Public
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); !errors.Is(err, tpmsim.ErrClosed) {
		t.Errorf("second Close = %v, want ErrClosed", err)
	}
	if _, err := first.Send([]byte{0}); !errors.Is(err, tpmsim.ErrClosed) {
		t.Errorf("Send after Close = %v, want ErrClosed", err)
	}

	second := openTPM(t, testSeed)
	ek2 := rsaEK(t, second).Public
	second.Close()
	if !equalKeys(ek1, ek2) {
		t.Error("same seed gave different EKs")
	}

	other := openTPM(t, testSeed+1)
	ek3 := rsaEK(t, other).Public
	other.Close()
	if equalKeys(ek1, ek3) {
		t.Error("different seeds gave the same EK")
	}

	random := openTPM(t, 0)
	ek4 := rsaEK(t, random).Public
	random.Close()
	if equalKeys(ek1, ek4) {
		t.Error("seed 0 (random) gave the fixed-seed EK")
	}
}

func TestMeasurementLog(t *testing.T) {
	tpm := openTPM(t, testSeed)
	defer tpm.Close()
	if log, err := tpm.MeasurementLog(); log != nil || err != nil {
		t.Errorf("MeasurementLog() = %x, %v; want nil, nil", log, err)
	}
	tpm.SetMeasurementLog([]byte{1, 2, 3})
	if log, err := tpm.MeasurementLog(); string(log) != "\x01\x02\x03" || err != nil {
		t.Errorf("MeasurementLog() = %x, %v; want 010203, nil", log, err)
	}
}

func TestLoadOrCreateManufacturer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	m1, err := tpmsim.LoadOrCreateManufacturer(dir)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, tpmsim.ManufacturerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", fi.Mode().Perm())
	}
	m2, err := tpmsim.LoadOrCreateManufacturer(dir)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if !m1.Certificate.Equal(m2.Certificate) || !equalKeys(m1.Key.Public(), m2.Key.Public()) {
		t.Error("loaded manufacturer differs from the created one")
	}
	if !m2.Certificate.IsCA {
		t.Error("manufacturer certificate is not a CA")
	}

	// A lone key (certificate deleted) is reported, not replaced.
	if err := os.Remove(filepath.Join(dir, tpmsim.ManufacturerCertFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := tpmsim.LoadOrCreateManufacturer(dir); err == nil {
		t.Error("incomplete manufacturer directory accepted")
	}
}

func TestIssueEKCertificateSAN(t *testing.T) {
	m, err := tpmsim.NewManufacturer("test manufacturer")
	if err != nil {
		t.Fatal(err)
	}
	// Any public key type the TPM may have: use the manufacturer's own
	// ECDSA key as a stand-in ECC EK.
	der, err := m.IssueEKCertificate(m.Key.Public())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if cert.KeyUsage != x509.KeyUsageKeyAgreement {
		t.Errorf("ECC EK key usage = %v, want keyAgreement", cert.KeyUsage)
	}
	var found bool
	for _, e := range cert.Extensions {
		if e.Id.Equal([]int{2, 5, 29, 17}) {
			found = true
			if !e.Critical {
				t.Error("subjectAltName is not critical")
			}
		}
	}
	if !found {
		t.Error("no subjectAltName")
	}
}

func TestStateDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tpm")
	m, err := tpmsim.LoadOrCreateManufacturer(filepath.Join(t.TempDir(), "mfr"))
	if err != nil {
		t.Fatal(err)
	}
	der, err := tpmsim.ManufactureState(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, tpmsim.SeedFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("seed file: %v, %v; want mode 0600", fi, err)
	}
	// A reopened state has the same EK, with its certificate back in NV.
	sim, err := tpmsim.OpenState(dir)
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: sim})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	eks, err := tpm.EKs()
	if err != nil {
		t.Fatal(err)
	}
	if eks[0].Certificate == nil || !bytes.Equal(eks[0].Certificate.Raw, der) {
		t.Fatal("reopened state lacks the manufactured EK certificate")
	}
	if !equalKeys(eks[0].Certificate.PublicKey, eks[0].Public) {
		t.Error("EK certificate is for another key")
	}
}

// TestStateKeepsKeyBlobs: AK blobs made before a restart load after it, as
// on a real TPM, because the storage root key is reproduced from the seed.
func TestStateKeepsKeyBlobs(t *testing.T) {
	dir := t.TempDir()
	open := func() *goattest.TPM {
		sim, err := tpmsim.OpenState(dir)
		if err != nil {
			t.Fatal(err)
		}
		tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: sim})
		if err != nil {
			t.Fatal(err)
		}
		return tpm
	}
	tpm := open()
	ak, err := tpm.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
	if err != nil {
		t.Fatal(err)
	}
	blob, err := ak.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	ak.Close(tpm)
	tpm.Close()

	tpm = open()
	defer tpm.Close()
	ak, err = tpm.LoadAK(blob)
	if err != nil {
		t.Fatalf("AK blob from before the restart: %v", err)
	}
	ak.Close(tpm)
}

func TestStateCorruptSeed(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, tpmsim.SeedFile), []byte("not a number\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := tpmsim.OpenState(dir); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt seed: got %v", err)
	}
}
