package e2e_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/device/supervise"
)

// Measured boot end to end: a simulated TPM with simulated platform
// firmware (sim-manufacture --firmware-version; every start of the
// simulated TPM measures the firmware's event log into its PCRs), an agent
// that sends that log (--event-log), enrolld with a group that enforces
// measured boot, and the operator approving firmware with enrollctl.

// startAgentWithLog is startAgent sending the event log eventLog.
func startAgentWithLog(t *testing.T, url, rootCA, tpmDir, dataDir, eventLog string) *agent {
	t.Helper()
	a := &agent{dataDir: dataDir, stderr: &syncBuffer{}, lines: make(chan string, 1000)}
	args := []string{"run", "--server", url, "--root-ca", rootCA, "--tpm", "simulator:" + tpmDir, "--data-dir", dataDir}
	runArgs := slices.Clone(agentRunArgs)
	runArgs[slices.Index(runArgs, "--event-log")+1] = eventLog
	a.cmd = exec.Command(bins.agentSim, append(args, runArgs...)...)
	a.cmd.Stderr = a.stderr
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	close(a.lines)
	t.Cleanup(func() { a.stop() })
	return a
}

// waitStatus polls the agent's status file until ok accepts it.
func (a *agent) waitStatus(t *testing.T, limit time.Duration, what string, ok func(*device.Status) bool) *device.Status {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		s, err := supervise.ReadStatus(filepath.Join(a.dataDir, "status.json"))
		if err == nil && ok(s) {
			return s
		}
		if a.cmd.ProcessState != nil {
			t.Fatalf("agent exited while waiting for %s:\n%s", what, a.stderr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent status never showed %s (last: %+v):\n%s", what, s, a.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMeasuredBoot: a golden device is refused while its group approves no
// firmware, and its record shows what it booted; the operator approves that
// firmware from the device; the device enrolls and renews. After a
// firmware update and a reboot its next renewal is refused with
// firmware_not_approved, while the agent stays ready on its unexpired
// certificate and the record shows the new digest and the reason; once the
// operator approves the new firmware from the device, it renews again.
func TestMeasuredBoot(t *testing.T) {
	needBinaries(t)
	work := t.TempDir()
	mfr := filepath.Join(work, "manufacturer")
	tpmDir := filepath.Join(work, "tpm")
	eventLog := filepath.Join(tpmDir, "event_log.bin")
	out, _ := run(t, false, bins.agentSim, "sim-manufacture", "--state", tpmDir, "--manufacturer-ca", mfr, "--firmware-version", "Acme Gateway 1.4.2")
	digestRE := regexp.MustCompile(`firmware digest ([0-9a-f]{64})`)
	m := digestRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("sim-manufacture did not print the firmware digest:\n%s", out)
	}
	v1 := m[1]
	id, _ := run(t, false, bins.agentSim, "identity", "--tpm", "simulator:"+tpmDir)
	id = strings.TrimSpace(id)

	s := startServer(t, "--manufacturer-roots", filepath.Join(mfr, "manufacturer_ca.crt"))
	s.ctl(t, 0, "", "groups", "set", "default", "--measured-boot", "enforce", "--require-secure-boot")
	var gr api.Group
	s.ctlJSON(t, "", &gr, "groups", "get", "default")
	if gr.MeasuredBoot != api.MeasuredBootEnforce || !gr.RequireSecureBoot || gr.Admission != api.AdmissionAuto {
		t.Fatalf("group = %+v, want enforce with secure boot, admission kept auto", gr)
	}
	record := func() api.DeviceDetail {
		t.Helper()
		var d api.DeviceDetail
		s.ctlJSON(t, "", &d, "devices", "get", id)
		return d
	}
	dataDir := filepath.Join(work, "device")
	enroll := func(wantErr bool) (string, string) {
		t.Helper()
		return run(t, wantErr, bins.agentSim, "enroll", "--server", s.url, "--root-ca", s.rootCA, "--tpm", "simulator:"+tpmDir,
			"--data-dir", dataDir, "--event-log", eventLog, "--attempts", "1", "--timeout", "90s")
	}

	// 1. The golden device: nothing approved yet.
	_, stderr := enroll(true)
	if !strings.Contains(stderr, string(api.CodeFirmwareNotApproved)) || !strings.Contains(stderr, "enrollctl firmware add") {
		t.Fatalf("first enrollment: stderr lacks %s and the fix:\n%s", api.CodeFirmwareNotApproved, stderr)
	}
	d := record()
	if d.Status != api.StatusRefused || d.Firmware == nil || d.Firmware.Digest != v1 || d.Firmware.Code != api.CodeFirmwareNotApproved || !d.Firmware.SecureBoot {
		t.Fatalf("refused golden device = status %s, firmware %+v; want refused with digest %s", d.Status, d.Firmware, v1)
	}
	if table := s.ctl(t, 0, "", "devices", "get", id); !strings.Contains(table, "Firmware verdict:") || !strings.Contains(table, v1) {
		t.Errorf("devices get does not show the firmware:\n%s", table)
	}

	// 2. The operator approves the firmware the golden device measured.
	s.ctl(t, 0, "", "firmware", "add", "--group", "default", "--from-device", id, "--name", "acme-gw 1.4.2")
	var refs api.FirmwareList
	s.ctlJSON(t, "", &refs, "firmware", "list", "--group", "default")
	if len(refs.References) != 1 || refs.References[0].Digest != v1 || refs.References[0].SourceDevice != id {
		t.Fatalf("firmware list = %+v", refs)
	}

	// 3. It enrolls, and renews.
	out, _ = enroll(false)
	checkEnrolled(t, out, dataDir)
	enroll(false)
	d = record()
	if d.Status != api.StatusEnrolled || d.Renewals != 1 || d.Firmware.Verdict != api.FirmwareApproved || d.Firmware.Reference != "acme-gw 1.4.2" {
		t.Fatalf("after enrollment and renewal: status %s, %d renewals, firmware %+v", d.Status, d.Renewals, d.Firmware)
	}

	// 4. The long-running agent, then a firmware update and a reboot.
	a := startAgentWithLog(t, s.url, s.rootCA, tpmDir, dataDir, eventLog)
	before := a.waitReady(t, 60*time.Second)
	a.stop()
	out, _ = run(t, false, bins.agentSim, "sim-firmware", "--state", tpmDir, "--firmware-version", "Acme Gateway 1.5.0")
	m = digestRE.FindStringSubmatch(out)
	if m == nil || m[1] == v1 {
		t.Fatalf("sim-firmware: no new firmware digest:\n%s", out)
	}
	v2 := m[1]
	a = startAgentWithLog(t, s.url, s.rootCA, tpmDir, dataDir, eventLog)
	a.waitReady(t, 30*time.Second)
	a.cmd.Process.Signal(syscall.SIGHUP) // renew now
	st := a.waitStatus(t, 60*time.Second, "a refused renewal", func(s *device.Status) bool {
		return s.LastErrorCode == string(api.CodeFirmwareNotApproved)
	})
	if !st.Ready || st.CertSerial != before.CertSerial || st.Phase != device.PhaseRefused {
		t.Errorf("after the refused renewal: ready %v, phase %s, certificate %s (was %s); want still ready on the old certificate",
			st.Ready, st.Phase, st.CertSerial, before.CertSerial)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "ready.json")); err != nil {
		t.Errorf("ready file gone after a refused renewal: %v", err)
	}
	d = record()
	if d.Status != api.StatusEnrolled || d.CertSerial != before.CertSerial || d.Firmware.Digest != v2 ||
		d.Firmware.Code != api.CodeFirmwareNotApproved || !d.Firmware.Renewal || !strings.Contains(d.Firmware.Reason, "not an approved reference") {
		t.Fatalf("after the refused renewal: status %s, cert %s, firmware %+v; want enrolled on %s, refused digest %s",
			d.Status, d.CertSerial, d.Firmware, before.CertSerial, v2)
	}

	// 5. The operator approves the update from the device; it renews.
	s.ctl(t, 0, "", "firmware", "add", "--group", "default", "--from-device", id)
	a.cmd.Process.Signal(syscall.SIGHUP)
	st = a.waitStatus(t, 60*time.Second, "a renewal", func(s *device.Status) bool {
		return s.Ready && s.CertSerial != before.CertSerial && s.LastErrorCode == ""
	})
	d = record()
	if d.CertSerial != st.CertSerial || d.Firmware.Verdict != api.FirmwareApproved || d.Firmware.Digest != v2 || d.Renewals < 2 {
		t.Errorf("after approval: cert %s (agent %s), %d renewals, firmware %+v", d.CertSerial, st.CertSerial, d.Renewals, d.Firmware)
	}
	a.stop()

	// The log of it all: two refusals, two firmware approvals.
	recs := s.audit(t)
	wantAudit(t, recs, "device.firmware", id, "refused", 2)
	wantAudit(t, recs, "firmware.add", "group/default", "success", 2)
	s.ctlJSON(t, "", &refs, "firmware", "list")
	if len(refs.References) != 2 {
		t.Errorf("firmware list = %+v, want both versions", refs)
	}
	t.Logf("device %s: firmware %s approved, enrolled and renewed; after the update to %s, renewal refused (%s) on certificate %s, then renewed to %s once approved",
		id[:12], v1[:12], v2[:12], api.CodeFirmwareNotApproved, before.CertSerial, st.CertSerial)
}
