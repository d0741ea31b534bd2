package e2e_test

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/edgeenroll/edgeenroll/loadgen"
)

// benchBin is enroll-bench, built on first use (it links the simulator,
// so cgo is on).
var benchBin struct {
	once sync.Once
	path string
	err  error
}

func needBench(t *testing.T) string {
	t.Helper()
	needBinaries(t)
	benchBin.once.Do(func() {
		benchBin.path = filepath.Join(bins.dir, "enroll-bench")
		cmd := exec.Command("go", "build", "-o", benchBin.path, "./cmd/enroll-bench")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			benchBin.err = err
			t.Logf("go build ./cmd/enroll-bench:\n%s", out)
		}
	})
	if benchBin.err != nil {
		t.Fatalf("building enroll-bench: %v", benchBin.err)
	}
	return benchBin.path
}

// TestEnrollBench runs enroll-bench against a real enrolld: 20 simulated
// devices enroll and renew, the JSON report is consistent with itself and
// with the server's device list.
func TestEnrollBench(t *testing.T) {
	bench := needBench(t)
	work := t.TempDir()
	mfr := filepath.Join(work, "manufacturer")
	root, _ := run(t, false, bench, "manufacturer", "--dir", mfr)
	s := startServer(t, "--manufacturer-roots", strings.TrimSpace(root))

	const n = 20
	out, stderr := run(t, false, bench, "run", "--server", s.url, "--root-ca", s.rootCA, "--manufacturer-ca", mfr,
		"--identities", filepath.Join(work, "identities.gob"),
		"-n", "20", "-c", "8", "--workers", "2", "--renew", "--timeout", "90s", "-o", "json")
	var rep loadgen.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("enroll-bench -o json: %v\n%s\nstderr:\n%s", err, out, stderr)
	}
	if rep.Setup.Devices != n || rep.Setup.Workers != 2 || !strings.HasPrefix(rep.Setup.TLS, "TLS 1.3") {
		t.Errorf("setup %+v", rep.Setup)
	}
	if rep.Identities.Count != n || rep.Identities.Created != n || rep.Identities.PerSecond <= 0 {
		t.Errorf("identities %+v", rep.Identities)
	}
	if len(rep.Phases) != 2 {
		t.Fatalf("%d phases, want enroll and renew", len(rep.Phases))
	}
	for _, p := range rep.Phases {
		if p.Succeeded != n || p.Failed != 0 || len(p.Errors) != 0 {
			t.Errorf("%s: %d/%d succeeded, %d failed, errors %v", p.Name, p.Succeeded, n, p.Failed, p.Errors)
		}
		if p.PerSecond <= 0 || p.Seconds <= 0 {
			t.Errorf("%s: %v/s over %vs", p.Name, p.PerSecond, p.Seconds)
		}
		for name, sm := range map[string]loadgen.Summary{"begin": p.Begin, "finish": p.Finish, "enrollment": p.Enrollment, "time to ready": p.TimeToReady} {
			if sm.Count != n || sm.P50 <= 0 || sm.P50 > sm.P95 || sm.P95 > sm.P99 || sm.P99 > sm.Max {
				t.Errorf("%s %s: %+v", p.Name, name, sm)
			}
		}
		// The server was found by its port and measured.
		if p.Server == nil || len(p.Server.PIDs) != 1 || p.Server.CPUSeconds <= 0 || p.Server.CPUMsPerOp <= 0 || p.Server.PeakRSSBytes == 0 {
			t.Errorf("%s: server figures %+v", p.Name, p.Server)
		}
		if len(p.DeviceSide.PIDs) != 3 || p.DeviceSide.CPUSeconds <= 0 {
			t.Errorf("%s: device-side figures %+v", p.Name, p.DeviceSide)
		}
	}
	if rep.EnrollmentsPerSecond <= 0 || rep.RenewalsPerSecond <= 0 || rep.ServerCPUMsPerEnrollment <= 0 {
		t.Errorf("headline figures: %v enrollments/s, %v renewals/s, %v server ms/enrollment",
			rep.EnrollmentsPerSecond, rep.RenewalsPerSecond, rep.ServerCPUMsPerEnrollment)
	}

	// One record per device, enrolled twice: no duplicates.
	devs := s.devices(t)
	if len(devs) != n {
		t.Fatalf("server lists %d devices, want %d", len(devs), n)
	}
	for _, d := range devs {
		if d.Enrollments != 2 || d.Admission != "ek_certificate" {
			t.Errorf("device %s: %d enrollments, admission %s; want 2 by EK certificate", d.DeviceID, d.Enrollments, d.Admission)
		}
	}

	// The identity file makes a second run skip pre-creation.
	out, _ = run(t, false, bench, "run", "--server", s.url, "--root-ca", s.rootCA, "--manufacturer-ca", mfr,
		"--identities", filepath.Join(work, "identities.gob"), "-n", "5", "-c", "5", "--workers", "1", "-o", "json")
	var again loadgen.Report
	if err := json.Unmarshal([]byte(out), &again); err != nil {
		t.Fatal(err)
	}
	if again.Identities.Created != 0 || again.Phases[0].Succeeded != 5 {
		t.Errorf("second run: identities %+v, %d succeeded", again.Identities, again.Phases[0].Succeeded)
	}
}

// TestEnrollBenchMQTT runs enroll-bench over enrolld's embedded MQTT
// broker: 20 simulated devices, each with its own bootstrap connection,
// enroll and renew with sealed finish answers opened by the key from their
// TPM's activation secret; then compare runs HTTPS and MQTT side by side
// against the same server.
func TestEnrollBenchMQTT(t *testing.T) {
	bench := needBench(t)
	work := t.TempDir()
	mfr := filepath.Join(work, "manufacturer")
	root, _ := run(t, false, bench, "manufacturer", "--dir", mfr)
	mqttAddr := freeAddr(t)
	s := startServer(t, "--manufacturer-roots", strings.TrimSpace(root), "--mqtt-listen", mqttAddr)
	_, port, _ := net.SplitHostPort(mqttAddr)
	mqttURL := "mqtts://localhost:" + port
	ids := filepath.Join(work, "identities.gob")

	const n = 20
	out, stderr := run(t, false, bench, "run", "--server", mqttURL, "--root-ca", s.rootCA, "--manufacturer-ca", mfr,
		"--identities", ids, "-n", "20", "-c", "8", "--workers", "2", "--renew", "--timeout", "90s", "-o", "json")
	var rep loadgen.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("enroll-bench -o json: %v\n%s\nstderr:\n%s", err, out, stderr)
	}
	if rep.Setup.Transport != "mqtt" || rep.Setup.Server != mqttURL || rep.Setup.Devices != n {
		t.Errorf("setup %+v", rep.Setup)
	}
	if len(rep.Phases) != 2 {
		t.Fatalf("%d phases, want enroll and renew", len(rep.Phases))
	}
	for _, p := range rep.Phases {
		if p.Succeeded != n || p.Failed != 0 || len(p.Errors) != 0 {
			t.Errorf("%s: %d/%d succeeded, %d failed, errors %v\nstderr:\n%s", p.Name, p.Succeeded, n, p.Failed, p.Errors, stderr)
		}
		if p.Finish.Count != n || p.Enrollment.P50 <= 0 {
			t.Errorf("%s: finish %+v, enrollment %+v", p.Name, p.Finish, p.Enrollment)
		}
		// The server (with its broker) was found by the MQTT port.
		if p.Server == nil || p.Server.CPUSeconds <= 0 || p.Server.CPUMsPerOp <= 0 {
			t.Errorf("%s: server figures %+v", p.Name, p.Server)
		}
	}
	devs := s.devices(t)
	if len(devs) != n {
		t.Fatalf("server lists %d devices, want %d", len(devs), n)
	}
	for _, d := range devs {
		if d.Enrollments != 2 {
			t.Errorf("device %s: %d enrollments over MQTT, want 2", d.DeviceID, d.Enrollments)
		}
	}

	// compare: HTTPS and MQTT against the same server in one invocation.
	out, stderr = run(t, false, bench, "compare", "--https", s.url, "--mqtt", mqttURL, "--root-ca", s.rootCA,
		"--manufacturer-ca", mfr, "--identities", ids, "-n", "10", "-c", "5", "--workers", "1", "--rounds", "1",
		"--timeout", "60s", "-o", "json")
	var cmp loadgen.Comparison
	if err := json.Unmarshal([]byte(out), &cmp); err != nil {
		t.Fatalf("enroll-bench compare -o json: %v\n%s\nstderr:\n%s", err, out, stderr)
	}
	if len(cmp.Results) != 2 || cmp.Results[0].Transport != "https" || cmp.Results[1].Transport != "mqtt" {
		t.Fatalf("compare results %+v", cmp.Results)
	}
	for _, r := range cmp.Results {
		// Ten enrollments take a few clock ticks of server CPU (10 ms
		// each in /proc): the figure must be read, and may round to 0.
		if len(r.Runs) != 1 || r.Failed != 0 || r.EnrollmentsPerSecond <= 0 || r.ServerCPUMsPerEnrollment < 0 ||
			len(r.Runs[0].Phases) == 0 || r.Runs[0].Phases[0].Server == nil {
			t.Errorf("%s: %d runs, %d failed, %v/s, %v server ms", r.Transport, len(r.Runs), r.Failed, r.EnrollmentsPerSecond, r.ServerCPUMsPerEnrollment)
		}
	}
	if cmp.MQTTOverHTTPS <= 0 || cmp.CPUMQTTOverHTTPS < 0 {
		t.Errorf("ratios %v / %v", cmp.MQTTOverHTTPS, cmp.CPUMQTTOverHTTPS)
	}
	// compare needs 2 × 10 identities: the file has 20, none are made.
	if cmp.Identities.Count != 20 || cmp.Identities.Created != 0 {
		t.Errorf("compare identities %+v", cmp.Identities)
	}
	if got := len(s.devices(t)); got != n {
		t.Errorf("after compare the server lists %d devices, want %d (compare reused the first 10)", got, n)
	}
}
