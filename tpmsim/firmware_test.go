package tpmsim_test

import (
	"bytes"
	"errors"
	"os"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// TestStateFirmware: with simulated firmware installed, every OpenState
// is a power-on that measures the firmware's event log into the PCRs, so
// the PCRs replay from the log; a firmware update takes effect at the next
// open.
func TestStateFirmware(t *testing.T) {
	dir := t.TempDir()
	v1, err := tpmsim.InstallFirmware(dir, tpmsim.FirmwareOptions{Version: "1.0"})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(tpmsim.EventLogPath(dir)); err != nil || !bytes.Equal(b, v1) {
		t.Fatalf("event log file: %v", err)
	}
	pcr0 := func(wantLog []byte) []byte {
		t.Helper()
		sim, err := tpmsim.OpenState(dir)
		if errors.Is(err, tpmsim.ErrCgoRequired) {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer sim.Close()
		if got, _ := sim.MeasurementLog(); !bytes.Equal(got, wantLog) {
			t.Error("MeasurementLog is not the installed firmware's log")
		}
		tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: sim})
		if err != nil {
			t.Fatal(err)
		}
		pcrs, err := tpm.PCRs(goattest.HashSHA256)
		if err != nil {
			t.Fatal(err)
		}
		el, err := goattest.ParseEventLog(wantLog)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := el.Verify(pcrs); err != nil {
			t.Fatalf("the log does not replay to the simulated TPM's PCRs: %v", err)
		}
		for _, p := range pcrs {
			if p.Index == 0 {
				return p.Digest
			}
		}
		t.Fatal("no PCR 0")
		return nil
	}
	first := pcr0(v1)
	if again := pcr0(v1); !bytes.Equal(first, again) {
		t.Error("the same firmware measured another PCR 0 at the next power-on")
	}
	v2, err := tpmsim.InstallFirmware(dir, tpmsim.FirmwareOptions{Version: "2.0", SecureBootDisabled: true})
	if err != nil {
		t.Fatal(err)
	}
	if updated := pcr0(v2); bytes.Equal(first, updated) {
		t.Error("a firmware update left PCR 0 unchanged")
	}
}

// TestStateWithoutFirmware: no event log, PCRs at their reset values.
func TestStateWithoutFirmware(t *testing.T) {
	sim, err := tpmsim.OpenState(t.TempDir())
	if errors.Is(err, tpmsim.ErrCgoRequired) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	if log, err := sim.MeasurementLog(); err != nil || log != nil {
		t.Errorf("MeasurementLog = %d bytes, %v; want none", len(log), err)
	}
	tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: sim})
	if err != nil {
		t.Fatal(err)
	}
	pcrs, err := tpm.PCRs(goattest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pcrs[0].Digest, make([]byte, 32)) {
		t.Errorf("PCR 0 = %x, want zeros", pcrs[0].Digest)
	}
}
