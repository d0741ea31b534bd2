package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
)

// bins holds the binaries built once for the whole test binary.
var bins struct {
	dir                 string
	enrolld, ctl, agent string
	agentSim            string
	err                 error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgeenroll-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.dir = dir
	bins.enrolld = filepath.Join(dir, "enrolld")
	bins.ctl = filepath.Join(dir, "enrollctl")
	bins.agent = filepath.Join(dir, "enroll-agent")
	bins.agentSim = filepath.Join(dir, "enroll-agent-sim")
	for _, b := range []struct{ out, pkg, tags string }{
		{bins.enrolld, "./cmd/enrolld", ""},
		{bins.ctl, "./cmd/enrollctl", ""},
		{bins.agent, "./cmd/enroll-agent", ""},
		{bins.agentSim, "./cmd/enroll-agent", "simulator"},
	} {
		args := []string{"build", "-o", b.out}
		if b.tags != "" {
			args = append(args, "-tags", b.tags)
		}
		cmd := exec.Command("go", append(args, b.pkg)...)
		cmd.Dir = ".."
		// Production binaries are built without cgo, as for a
		// cross-compiled arm64 device; only the simulator build links C.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b.tags == "simulator" {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			bins.err = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
			break
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needBinaries(t *testing.T) {
	t.Helper()
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

// server is a running enrolld.
type server struct {
	url     string
	dataDir string
	rootCA  string
	log     *bytes.Buffer
	// stop interrupts enrolld and waits for it (once; cleanup calls it).
	stop func()
}

// startServer runs enrolld serve on a free loopback port and waits until
// it serves.
func startServer(t *testing.T, args ...string) *server {
	t.Helper()
	return startServerIn(t, filepath.Join(t.TempDir(), "enrolld"), args...)
}

// oneTPMDeviceRate is enrolld's --rate-per-device in these tests, where
// one simulated TPM plays the same device again and again.
const oneTPMDeviceRate = "1000"

// startServerIn is startServer with data directory dataDir, so that a test
// can stop enrolld (server.stop) and start it again on the same state.
func startServerIn(t *testing.T, dataDir string, args ...string) *server {
	t.Helper()
	needBinaries(t)
	s := &server{dataDir: dataDir, log: &bytes.Buffer{}}
	s.rootCA = filepath.Join(s.dataDir, "ca", "root_ca.crt")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bins.enrolld, append([]string{"serve", "--data-dir", s.dataDir, "--listen", "127.0.0.1:0", "--rate-per-device", oneTPMDeviceRate}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			s.log.WriteString(line + "\n")
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "enrolld serving" {
				addr <- rec.Addr
			}
		}
	}()
	s.stop = sync.OnceFunc(func() {
		cancel()
		<-logDone
		cmd.Wait()
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("enrolld exited with %d after SIGINT, want 0", code)
		}
	})
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("enrolld log:\n%s", s.log)
		}
	})
	select {
	case a := <-addr:
		_, port, _ := net.SplitHostPort(a)
		s.url = "https://localhost:" + port
	case <-time.After(30 * time.Second):
		t.Fatalf("enrolld did not start; log:\n%s", s.log)
	}
	return s
}

// run runs a binary to completion within a time limit and returns stdout;
// it fails the test on a non-zero exit unless wantErr.
func run(t *testing.T, wantErr bool, bin string, args ...string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if (err != nil) != wantErr {
		t.Fatalf("%s %s: err = %v, wantErr %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(bin), strings.Join(args, " "), err, wantErr, o.String(), e.String())
	}
	return o.String(), e.String()
}

func (s *server) devices(t *testing.T) []api.DeviceSummary {
	t.Helper()
	out, _ := run(t, false, bins.ctl, "devices", "list", "-o", "json", "--server", s.url, "--admin-dir", filepath.Join(s.dataDir, "admin"))
	var list api.DeviceList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("enrollctl devices list -o json: %v\n%s", err, out)
	}
	return list.Devices
}

func (s *server) enroll(t *testing.T, agent, tpm, dataDir string, wantErr bool) (string, string) {
	t.Helper()
	return run(t, wantErr, agent, "enroll", "--server", s.url, "--root-ca", s.rootCA, "--tpm", tpm,
		"--data-dir", dataDir, "--event-log", "", "--attempts", "1", "--timeout", "90s")
}

func checkEnrolled(t *testing.T, out, dataDir string) {
	t.Helper()
	for _, want := range []string{"enrolled device ", "mTLS call to ", "succeeded", filepath.Join(dataDir, "device.crt"), filepath.Join(dataDir, "config.json")} {
		if !strings.Contains(out, want) {
			t.Errorf("agent output lacks %q:\n%s", want, out)
		}
	}
	for _, f := range []string{"device.crt", "config.json", "agent.db"} {
		if _, err := os.Stat(filepath.Join(dataDir, f)); err != nil {
			t.Errorf("agent did not write %s: %v", f, err)
		}
	}
}

// TestSimulatorAgent is the demo path: a simulated TPM certified by a demo
// manufacturer, an agent built with -tags simulator.
func TestSimulatorAgent(t *testing.T) {
	needBinaries(t)
	if runtime.GOOS != "linux" {
		t.Fatalf("e2e tests run on Linux, not %s", runtime.GOOS)
	}
	work := t.TempDir()
	mfr := filepath.Join(work, "manufacturer")
	tpmState := filepath.Join(work, "device", "tpm")
	run(t, false, bins.agentSim, "sim-manufacture", "--state", tpmState, "--manufacturer-ca", mfr)

	s := startServer(t, "--manufacturer-roots", filepath.Join(mfr, "manufacturer_ca.crt"), "--bundle-config", "../testdata/demo-bundle.json")
	dataDir := filepath.Join(work, "device")
	out, _ := s.enroll(t, bins.agentSim, "simulator:"+tpmState, dataDir, false)
	checkEnrolled(t, out, dataDir)

	// Re-running converges: same device, same TPM key, one record, two
	// enrollments.
	_, stderr := s.enroll(t, bins.agentSim, "simulator:"+tpmState, dataDir, false)
	if strings.Contains(stderr, "refused the cached") {
		t.Errorf("restarted agent lost its TPM key:\n%s", stderr)
	}
	devs := s.devices(t)
	if len(devs) != 1 || devs[0].Enrollments != 2 || devs[0].Admission != "ek_certificate" {
		t.Fatalf("devices = %+v, want one device enrolled twice by EK certificate", devs)
	}
	// A separate process uses the cached certificate with the TPM key.
	who, _ := run(t, false, bins.agentSim, "whoami", "--server", s.url, "--root-ca", s.rootCA, "--tpm", "simulator:"+tpmState, "--data-dir", dataDir, "--event-log", "")
	if !strings.Contains(who, devs[0].DeviceID) {
		t.Errorf("whoami = %s, want device %s", who, devs[0].DeviceID)
	}

	// A production (cgo-free) agent refuses the simulator clearly.
	_, stderr = run(t, true, bins.agent, "enroll", "--root-ca", s.rootCA, "--tpm", "simulator:"+tpmState, "--data-dir", t.TempDir())
	if !strings.Contains(stderr, "-tags simulator") {
		t.Errorf("production agent's refusal does not say how to get the simulator:\n%s", stderr)
	}
}

// TestPreregistration: a TPM without an EK certificate is refused until the
// factory line pre-registers it with enrollctl.
func TestPreregistration(t *testing.T) {
	needBinaries(t)
	s := startServer(t)
	work := t.TempDir()
	tpm := "simulator:" + filepath.Join(work, "tpm")
	_, stderr := s.enroll(t, bins.agentSim, tpm, work, true)
	if !strings.Contains(stderr, string(api.CodeNotRegistered)) {
		t.Fatalf("unregistered device: stderr lacks %s:\n%s", api.CodeNotRegistered, stderr)
	}
	id, _ := run(t, false, bins.agentSim, "identity", "--tpm", tpm)
	id = strings.TrimSpace(id)
	run(t, false, bins.ctl, "preregister", "--ek-hash", id, "--serial", "SN-0001", "--group", "line-a",
		"--server", s.url, "--admin-dir", filepath.Join(s.dataDir, "admin"))
	out, _ := s.enroll(t, bins.agentSim, tpm, work, false)
	checkEnrolled(t, out, work)
	devs := s.devices(t)
	if len(devs) != 1 || devs[0].DeviceID != id || devs[0].Serial != "SN-0001" || devs[0].Admission != "preregistered" {
		t.Fatalf("devices = %+v", devs)
	}
}
