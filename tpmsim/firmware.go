package tpmsim

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
)

// EventLogFile is the TCG event log of a simulated device's platform
// firmware, in its state directory: what Linux would expose as
// /sys/kernel/security/tpm0/binary_bios_measurements.
const EventLogFile = "event_log.bin"

// EventLogPath is the event log of the simulated device whose state is in
// dir: give it to the agent (--event-log).
func EventLogPath(dir string) string { return filepath.Join(dir, EventLogFile) }

// FirmwareOptions describe a simulated platform firmware.
type FirmwareOptions struct {
	// Version is the firmware's S-CRTM version string; "" means
	// eventlogtest.DefaultFirmwareVersion. Each version measures
	// different firmware volumes into PCR 0, so it has its own firmware
	// digest.
	Version string
	// SecureBootDisabled boots with UEFI secure boot off.
	SecureBootDisabled bool
}

// FirmwareEventLog is the event log a boot of the simulated firmware o
// writes: a UEFI platform booting shim and GRUB, the size of a real one
// (eventlogtest.Realistic: 301 events over PCRs 0-9 and 14).
func FirmwareEventLog(o FirmwareOptions) *eventlogtest.Log {
	opts := eventlogtest.Realistic()
	opts.FirmwareVersion, opts.SecureBootDisabled = o.Version, o.SecureBootDisabled
	return eventlogtest.New(opts)
}

// InstallFirmware flashes the simulated platform firmware of the device
// whose state is in dir: it writes the event log the firmware's boot
// produces (EventLogFile). Like a firmware update, it takes effect at the
// next power-on, that is the next OpenState, which measures the log into
// the PCRs. It returns the log.
func InstallFirmware(dir string, o FirmwareOptions) ([]byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating simulator state %s: %w", dir, err)
	}
	log := FirmwareEventLog(o).Bytes()
	if err := atomicfile.Write(EventLogPath(dir), log, 0o644); err != nil {
		return nil, fmt.Errorf("writing event log: %w", err)
	}
	return log, nil
}

// measureBoot plays the platform firmware at power-on: if dir holds an
// event log, each of its SHA-256 digests is extended into its PCR, in log
// order (EV_NO_ACTION events extend nothing), so that the PCRs a quote
// reports and the log agree as on hardware; the log also becomes the
// TPM's MeasurementLog. Without a log the PCRs stay at their reset values,
// as on a machine without measured boot.
func measureBoot(t *TPM, dir string) error {
	log, err := os.ReadFile(EventLogPath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("reading simulated firmware event log: %w", err)
	}
	if err := ExtendEventLog(t, log); err != nil {
		return err
	}
	t.SetMeasurementLog(log)
	return nil
}

// ExtendEventLog extends the SHA-256 digests of a TCG event log (either
// format go-attestation parses) into the PCRs of tpm, in log order. The
// PCRs should be at their reset values (a fresh or reset TPM).
func ExtendEventLog(tpm transport.TPM, log []byte) error {
	el, err := goattest.ParseEventLog(log)
	if err != nil {
		return fmt.Errorf("parsing event log: %w", err)
	}
	const evNoAction = 0x00000003
	for i, e := range el.Events(goattest.HashSHA256) {
		if uint32(e.Type) == evNoAction {
			continue
		}
		if len(e.Digest) != 32 {
			return fmt.Errorf("event %d has no SHA-256 digest", i)
		}
		cmd := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(e.Index), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: e.Digest}}},
		}
		if _, err := cmd.Execute(tpm); err != nil {
			return fmt.Errorf("extending event %d into PCR %d: %w", i, e.Index, err)
		}
	}
	return nil
}
