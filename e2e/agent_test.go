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
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/device/supervise"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/internal/faultproxy"
)

// enrolld is a server process the test may kill -9 and restart on the same
// data directory and address.
type enrolld struct {
	t       *testing.T
	dataDir string
	listen  string
	args    []string
	cmd     *exec.Cmd
	log     *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func newEnrolld(t *testing.T, args ...string) *enrolld {
	t.Helper()
	needBinaries(t)
	e := &enrolld{t: t, dataDir: filepath.Join(t.TempDir(), "enrolld"), listen: freeAddr(t), args: args, log: &syncBuffer{}}
	e.start()
	t.Cleanup(func() {
		e.stop()
		if t.Failed() {
			t.Logf("enrolld log:\n%s", e.log)
		}
	})
	return e
}

func (e *enrolld) url() string {
	_, port, _ := net.SplitHostPort(e.listen)
	return "https://localhost:" + port
}

func (e *enrolld) rootCA() string { return filepath.Join(e.dataDir, "ca", "root_ca.crt") }

// start runs enrolld and waits until it answers.
func (e *enrolld) start() {
	e.t.Helper()
	e.cmd = exec.Command(bins.enrolld, append([]string{"serve", "--data-dir", e.dataDir, "--listen", e.listen, "--rate-per-device", oneTPMDeviceRate}, e.args...)...)
	e.cmd.Stderr = e.log
	if err := e.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(e.log.String(), `"msg":"enrolld serving"`) {
		if time.Now().After(deadline) || e.cmd.ProcessState != nil {
			e.t.Fatalf("enrolld did not start:\n%s", e.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.log.Write([]byte("--- started\n"))
}

// kill9 kills the server without warning.
func (e *enrolld) kill9() {
	e.cmd.Process.Kill()
	e.cmd.Wait()
	e.log.Write([]byte("--- SIGKILL\n"))
	// A fresh start must see "enrolld serving" again.
	e.log.mu.Lock()
	e.log.b.Reset()
	e.log.mu.Unlock()
}

func (e *enrolld) stop() {
	if e.cmd == nil || e.cmd.ProcessState != nil {
		return
	}
	e.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		e.cmd.Process.Kill()
		<-done
	}
}

// openStore opens the stopped server's store for inspection.
func (e *enrolld) openStore() *store.Bolt {
	e.t.Helper()
	e.stop()
	st, err := store.Open(filepath.Join(e.dataDir, "enroll.db"), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { st.Close() })
	return st
}

// checkStore asserts the server holds exactly want complete device records
// and never issued two certificates for one session.
func (e *enrolld) checkStore(want int) {
	e.t.Helper()
	st := e.openStore()
	ctx := context.Background()
	var devices []*store.Device
	if err := st.Devices(ctx, func(d *store.Device) bool { devices = append(devices, d); return true }); err != nil {
		e.t.Fatal(err)
	}
	if len(devices) != want {
		e.t.Errorf("server holds %d device records, want %d", len(devices), want)
	}
	certs, sessions := 0, map[string]string{}
	for _, d := range devices {
		if d.Status != store.StatusEnrolled || len(d.CertificateChain) == 0 || d.Bundle == "" || d.CertSerial == "" {
			e.t.Errorf("device %s is incomplete: status %s, %d certificates, bundle %d bytes", d.ID, d.Status, len(d.CertificateChain), len(d.Bundle))
		}
		err := st.Certificates(ctx, d.ID, "", func(c *store.IssuedCertificate) bool {
			certs++
			if prev, dup := sessions[c.SessionID]; dup {
				e.t.Errorf("session %s issued two certificates: %s and %s", c.SessionID, prev, c.Serial)
			}
			sessions[c.SessionID] = c.Serial
			return true
		})
		if err != nil {
			e.t.Fatal(err)
		}
	}
	e.t.Logf("%d devices, %d certificates issued over %d sessions", len(devices), certs, len(sessions))
}

// manufacture makes n simulated TPMs with EK certificates from one demo
// manufacturer, in parallel processes. It returns their state dirs and
// the manufacturer root.
func manufacture(t *testing.T, n int) (tpms []string, mfrRoot string) {
	t.Helper()
	needBinaries(t)
	dir := t.TempDir()
	mfr := filepath.Join(dir, "manufacturer")
	// The first creates the manufacturer CA; the rest reuse it.
	tpms = make([]string, n)
	for i := range tpms {
		tpms[i] = filepath.Join(dir, fmt.Sprintf("tpm-%03d", i))
	}
	run(t, false, bins.agentSim, "sim-manufacture", "--state", tpms[0], "--manufacturer-ca", mfr)
	parallel(t, n-1, 4, func(i int) error {
		out, err := exec.Command(bins.agentSim, "sim-manufacture", "--state", tpms[i+1], "--manufacturer-ca", mfr).CombinedOutput()
		if err != nil {
			return fmt.Errorf("sim-manufacture: %v\n%s", err, out)
		}
		return nil
	})
	return tpms, filepath.Join(mfr, "manufacturer_ca.crt")
}

// parallel runs fn(0..n-1) with at most width at once.
func parallel(t *testing.T, n, width int, fn func(i int) error) {
	t.Helper()
	sem := make(chan struct{}, width)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fn(i); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// agent is an enroll-agent run process.
type agent struct {
	cmd     *exec.Cmd
	dataDir string
	stderr  *syncBuffer
	lines   chan string // stderr lines, for tests that watch phases
}

// agentRunArgs are fast retry settings for tests on loopback.
var agentRunArgs = []string{"--event-log", "", "--request-timeout", "5s", "--attempt-timeout", "30s",
	"--retry-base", "100ms", "--retry-max", "2s", "--refused-backoff", "1h"}

func startAgent(t *testing.T, url, rootCA, tpmDir, dataDir string, extra ...string) *agent {
	t.Helper()
	a := &agent{dataDir: dataDir, stderr: &syncBuffer{}, lines: make(chan string, 1000)}
	args := append([]string{"run", "--server", url, "--root-ca", rootCA, "--tpm", "simulator:" + tpmDir, "--data-dir", dataDir}, agentRunArgs...)
	args = append(args, extra...)
	a.cmd = exec.Command(bins.agentSim, args...)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Stderr = pw
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			a.stderr.Write([]byte(sc.Text() + "\n"))
			select {
			case a.lines <- sc.Text():
			default:
			}
		}
		close(a.lines)
	}()
	t.Cleanup(func() { a.stop() })
	return a
}

func (a *agent) stop() {
	if a.cmd.ProcessState != nil {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { a.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		a.cmd.Process.Kill()
		<-done
	}
}

func (a *agent) kill9() {
	a.cmd.Process.Kill()
	a.cmd.Wait()
}

// waitReady waits for the ready file and returns the agent's status.
func (a *agent) waitReady(t *testing.T, limit time.Duration) *device.Status {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if _, err := os.Stat(filepath.Join(a.dataDir, "ready.json")); err == nil {
			s, err := supervise.ReadStatus(filepath.Join(a.dataDir, "status.json"))
			if err == nil && s.Ready {
				return s
			}
		}
		if a.cmd.ProcessState != nil {
			t.Fatalf("agent exited before ready:\n%s", a.stderr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready within %s:\n%s", limit, a.stderr)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestAgentBootsReadyFromCacheOffline: with a valid cache the agent is
// ready at boot with the server down, and makes no enrollment attempt.
func TestAgentBootsReadyFromCacheOffline(t *testing.T) {
	tpms, root := manufacture(t, 1)
	srv := newEnrolld(t, "--manufacturer-roots", root)
	dataDir := t.TempDir()
	a := startAgent(t, srv.url(), srv.rootCA(), tpms[0], dataDir)
	a.waitReady(t, 60*time.Second)
	a.stop()
	srv.stop()

	a = startAgent(t, srv.url(), srv.rootCA(), tpms[0], dataDir)
	s := a.waitReady(t, 10*time.Second)
	if s.Attempts != 0 {
		t.Errorf("offline boot made %d enrollment attempts, want 0", s.Attempts)
	}
	var ready struct {
		TimeToReady string `json:"time_to_ready"`
	}
	for _, line := range strings.Split(a.stderr.String(), "\n") {
		if strings.Contains(line, `"msg":"device ready"`) {
			json.Unmarshal([]byte(line), &ready)
		}
	}
	t.Logf("offline boot: ready %s after agent start (process, TPM session, cache check), no network", ready.TimeToReady)
	if ready.TimeToReady == "" {
		t.Errorf("no ready log line:\n%s", a.stderr)
	}
}

// TestAgentKilledAtEachPhase kills the agent with SIGKILL right after each
// phase boundary it logs, restarts it, and expects it to converge.
func TestAgentKilledAtEachPhase(t *testing.T) {
	phases := []string{"identity", "begin", "activate", "finish", "ready"}
	tpms, root := manufacture(t, len(phases))
	srv := newEnrolld(t, "--manufacturer-roots", root)
	for i, phase := range phases {
		t.Run(phase, func(t *testing.T) {
			dataDir := t.TempDir()
			a := startAgent(t, srv.url(), srv.rootCA(), tpms[i], dataDir)
			killed := false
			for line := range a.lines {
				var rec struct{ Phase string }
				if json.Unmarshal([]byte(line), &rec) == nil && rec.Phase == phase {
					a.kill9()
					killed = true
					break
				}
			}
			if !killed {
				t.Fatalf("agent never logged phase %s:\n%s", phase, a.stderr)
			}
			a = startAgent(t, srv.url(), srv.rootCA(), tpms[i], dataDir)
			a.waitReady(t, 60*time.Second)
			a.stop()
		})
	}
	srv.checkStore(len(phases))
}

// TestServerKilledDuringEnrollments kills enrolld with SIGKILL while agents
// enroll and restarts it: every device converges, none is lost or
// half-written.
func TestServerKilledDuringEnrollments(t *testing.T) {
	const n = 20
	tpms, root := manufacture(t, n)
	srv := newEnrolld(t, "--manufacturer-roots", root)
	agents := make([]*agent, n)
	for i := range agents {
		agents[i] = startAgent(t, srv.url(), srv.rootCA(), tpms[i], t.TempDir())
	}
	// Kill once a few devices are through, so others are mid-flight.
	deadline := time.Now().Add(60 * time.Second)
	for strings.Count(srv.log.String(), `"msg":"device enrolled"`) < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	srv.kill9()
	time.Sleep(500 * time.Millisecond)
	srv.start()
	for _, a := range agents {
		a.waitReady(t, 90*time.Second)
		a.stop()
	}
	srv.checkStore(n)
}

// TestFlakyLinks puts a TCP proxy that drops, delays, truncates and resets
// connections between many agents and the server. Every agent reaches
// ready, the server holds one record per device and one certificate per
// session at most, and no agent spins.
func TestFlakyLinks(t *testing.T) {
	n := 200
	if testing.Short() {
		n = 20
	}
	const width = 32 // agents enrolling at once
	tpms, root := manufacture(t, n)
	srv := newEnrolld(t, "--manufacturer-roots", root)
	_, port, _ := net.SplitHostPort(srv.listen)
	proxy, err := faultproxy.Start("127.0.0.1:"+port, faultproxy.Faults{
		Drop: 0.05, Reset: 0.1, Truncate: 0.1, Delay: 0.15,
		CutMax: 6000, HoldMax: 3 * time.Second, DelayMax: 150 * time.Millisecond,
	}, 42)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	_, pport, _ := net.SplitHostPort(proxy.Addr())
	url := "https://localhost:" + pport

	attempts := make([]int, n)
	start := time.Now()
	parallel(t, n, width, func(i int) error {
		a := startAgent(t, url, srv.rootCA(), tpms[i], t.TempDir())
		s := a.waitReady(t, 3*time.Minute)
		attempts[i] = s.Attempts
		a.stop()
		return nil
	})
	elapsed := time.Since(start)
	sort.Ints(attempts)
	total := 0
	for _, a := range attempts {
		total += a
	}
	st := proxy.Stats()
	t.Logf("%d agents ready in %s through %d connections (clean %d, dropped %d, reset %d, truncated %d, delayed %d)",
		n, elapsed.Round(time.Millisecond), st.Conns, st.Clean, st.Dropped, st.Reset, st.Truncated, st.Delayed)
	t.Logf("attempts per agent: min %d, median %d, p95 %d, max %d, total %d",
		attempts[0], attempts[n/2], attempts[n*95/100], attempts[n-1], total)
	// Bounded: with about a third of connections broken, no agent needs
	// more than a handful of attempts; a spinning agent would show
	// hundreds.
	if attempts[n-1] > 25 || total > 6*n {
		t.Errorf("agents retried too much: max %d attempts, total %d for %d agents", attempts[n-1], total, n)
	}
	if st.Dropped+st.Reset+st.Truncated == 0 {
		t.Error("the proxy injected no faults")
	}
	srv.checkStore(n)
}
