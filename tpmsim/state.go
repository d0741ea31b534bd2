package tpmsim

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/edgeenroll/edgeenroll/internal/atomicfile"

	goattest "github.com/google/go-attestation/attest"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// Files of a simulated device's state directory.
const (
	// SeedFile holds the decimal seed from which the simulator derives
	// its hierarchy seeds, and so the EK: the device's identity.
	SeedFile = "seed"
	// EKCertFile holds the DER EK certificate the "factory" issued.
	EKCertFile = "ek_certificate.der"
)

// The state directory may also hold EventLogFile, the event log of the
// simulated platform firmware (InstallFirmware).

// ManufacturerCertPath is the manufacturer root a server must trust to
// admit devices certified by the CA in dir.
func ManufacturerCertPath(dir string) string { return filepath.Join(dir, ManufacturerCertFile) }

// OpenState opens a simulated TPM whose identity persists in dir: the seed
// is created on first use (mode 0600), and an EK certificate in dir is
// written into the TPM's NV at every start, since the simulator's NV does
// not outlive the process. If dir holds a firmware event log
// (InstallFirmware), every open is a power-on: the log's digests are
// extended into the fresh PCRs, as platform firmware measures itself. The
// seed is the simulated TPM's secret, which is why this package is for
// demos and tests only.
func OpenState(dir string) (*TPM, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating simulator state %s: %w", dir, err)
	}
	seed, err := loadOrCreateSeed(filepath.Join(dir, SeedFile))
	if err != nil {
		return nil, err
	}
	t, err := Open(seed)
	if err != nil {
		return nil, err
	}
	if err := provisionSRK(t); err != nil {
		t.Close()
		return nil, err
	}
	if err := measureBoot(t, dir); err != nil {
		t.Close()
		return nil, err
	}
	der, err := os.ReadFile(filepath.Join(dir, EKCertFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return t, nil
	case err != nil:
		t.Close()
		return nil, fmt.Errorf("reading EK certificate: %w", err)
	}
	if err := ProvisionEKCertificate(t, der); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// ManufactureState plays the TPM vendor for the simulated TPM in dir: it
// reads the RSA EK, has m certify it, and stores the certificate in dir.
// It returns the certificate (DER). Re-running issues a fresh certificate
// for the same EK.
func ManufactureState(dir string, m *Manufacturer) ([]byte, error) {
	t, err := OpenState(dir)
	if err != nil {
		return nil, err
	}
	tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: t})
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("opening simulated TPM: %w", err)
	}
	defer tpm.Close()
	eks, err := tpm.EKs()
	if err != nil || len(eks) == 0 {
		return nil, fmt.Errorf("reading EK: %v", err)
	}
	der, err := m.IssueEKCertificate(eks[0].Public)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, EKCertFile), der, 0o644); err != nil {
		return nil, fmt.Errorf("writing EK certificate: %w", err)
	}
	return der, nil
}

// srkHandle is where TCG provisioning guidance puts the storage root key,
// and where go-attestation looks for it.
const srkHandle = tpmutil.Handle(0x81000001)

// srkTemplate is the TCG default RSA storage root key template (TCG TPM v2.0
// Provisioning Guidance, section 7.5.1), the template go-attestation uses.
var srkTemplate = legacy.Public{
	Type:       legacy.AlgRSA,
	NameAlg:    legacy.AlgSHA256,
	Attributes: legacy.FlagStorageDefault | legacy.FlagNoDA,
	RSAParameters: &legacy.RSAParams{
		Symmetric:  &legacy.SymScheme{Alg: legacy.AlgAES, KeyBits: 128, Mode: legacy.AlgCFB},
		ModulusRaw: make([]byte, 256),
		KeyBits:    2048,
	},
}

// provisionSRK creates the storage root key in the owner hierarchy and
// persists it, as a provisioned TPM has it. Without it go-attestation
// creates its own parent in the endorsement hierarchy, whose keys the
// simulator does not reproduce from the fixed seed: blobs made before a
// restart would then fail to load, and the simulated device would lose its
// AK and TPM key at every start.
func provisionSRK(t *TPM) error {
	h, _, err := legacy.CreatePrimary(t, legacy.HandleOwner, legacy.PCRSelection{}, "", "", srkTemplate)
	if err != nil {
		return fmt.Errorf("creating storage root key: %w", err)
	}
	defer legacy.FlushContext(t, h)
	if err := legacy.EvictControl(t, "", legacy.HandleOwner, h, srkHandle); err != nil {
		return fmt.Errorf("persisting storage root key: %w", err)
	}
	return nil
}

func loadOrCreateSeed(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		seed, perr := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if perr != nil || seed == 0 {
			return 0, fmt.Errorf("simulator seed file %s is corrupt: want a non-zero decimal integer", path)
		}
		return seed, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("reading simulator seed: %w", err)
	}
	var seed int64
	for seed == 0 {
		var buf [8]byte
		if _, err := rand.Read(buf[:]); err != nil {
			return 0, err
		}
		seed = int64(binary.LittleEndian.Uint64(buf[:]) >> 1)
	}
	if err := atomicfile.Write(path, []byte(strconv.FormatInt(seed, 10)+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("writing simulator seed: %w", err)
	}
	return seed, nil
}
