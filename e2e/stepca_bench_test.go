package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/loadgen"
)

// stepCABin is step-ca built once per test binary with loadgen.BuildStepCA
// (go install from the module proxy into the user cache directory, where
// the next run finds it).
var stepCABin struct {
	once  sync.Once
	build *loadgen.StepCABuild
	err   error
}

// stepCABuildTimeout bounds a cold build (downloads and compilation).
const stepCABuildTimeout = 8 * time.Minute

// needStepCA returns the step-ca binary. It fails, never skips, when
// step-ca cannot be built: CI has the module proxy, so it must build.
func needStepCA(t *testing.T) *loadgen.StepCABuild {
	t.Helper()
	stepCABin.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stepCABuildTimeout)
		defer cancel()
		var progress bytes.Buffer
		stepCABin.build, stepCABin.err = loadgen.BuildStepCA(ctx, "", "", &progress)
		t.Logf("%s", progress.String())
	})
	if stepCABin.err != nil {
		t.Fatalf("step-ca must build for this test: %v", stepCABin.err)
	}
	return stepCABin.build
}

// TestStepCAVersionMatchesGoMod keeps loadgen.StepCAVersion, what the
// comparison builds, at the step-ca version of go.mod.
func TestStepCAVersionMatchesGoMod(t *testing.T) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/smallstep/certificates")
	cmd.Dir = ".."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != loadgen.StepCAVersion {
		t.Errorf("go.mod has github.com/smallstep/certificates %s, loadgen.StepCAVersion is %s", got, loadgen.StepCAVersion)
	}
}

// TestStepCACompare runs enroll-bench compare-stepca small: 50 devices
// enroll with full TPM attestation against a real enrolld, 50 others ask a
// real step-ca (a separate process, built from the module proxy) for a
// plain certificate, 8 at a time each, and the JSON report is consistent.
// It asserts no ratio: that depends on the machine.
func TestStepCACompare(t *testing.T) {
	build := needStepCA(t)
	bench := needBench(t)
	work := t.TempDir()
	mfr := filepath.Join(work, "manufacturer")
	root, _ := run(t, false, bench, "manufacturer", "--dir", mfr)
	s := startServer(t, "--manufacturer-roots", strings.TrimSpace(root))

	const n, c = 50, 8
	start := time.Now()
	out, stderr := run(t, false, bench, "compare-stepca", "--server", s.url, "--root-ca", s.rootCA, "--manufacturer-ca", mfr,
		"--step-ca-bin", build.Path, "-n", "50", "-c", "8", "--workers", "2", "--timeout", "90s", "-o", "json")
	t.Logf("compare-stepca took %s", time.Since(start).Round(time.Millisecond))
	var cmp loadgen.StepCAComparison
	if err := json.Unmarshal([]byte(out), &cmp); err != nil {
		t.Fatalf("enroll-bench compare-stepca -o json: %v\n%s\nstderr:\n%s", err, out, stderr)
	}
	sc := cmp.StepCA
	if sc == nil || sc.Skipped != "" {
		t.Fatalf("step-ca was not measured: %+v\nstderr:\n%s", sc, stderr)
	}
	if strings.Join(cmp.Order, " ") != "ours stepca" || len(cmp.LoadBefore) != 2 {
		t.Errorf("order %v, load before %v", cmp.Order, cmp.LoadBefore)
	}
	if cmp.Identities.Count != n || cmp.Identities.Created != n {
		t.Errorf("identities %+v", cmp.Identities)
	}

	// Ours.
	if len(cmp.Ours.Runs) != 1 {
		t.Fatalf("%d runs of ours, want 1", len(cmp.Ours.Runs))
	}
	rep := cmp.Ours.Runs[0]
	if rep.Setup.Devices != n || rep.Setup.Concurrency != c || !strings.HasPrefix(rep.Setup.TLS, "TLS 1.3") {
		t.Errorf("ours: setup %+v", rep.Setup)
	}
	if len(rep.Phases) != 1 || rep.Phases[0].Name != loadgen.PhaseEnroll {
		t.Fatalf("ours: phases %+v", rep.Phases)
	}
	p := rep.Phases[0]
	if p.Succeeded != n || p.Failed != 0 || len(p.Errors) != 0 || p.Enrollment.Count != n {
		t.Errorf("ours: %d/%d succeeded, %d failed, errors %v, %d latencies", p.Succeeded, n, p.Failed, p.Errors, p.Enrollment.Count)
	}
	if p.Server == nil || p.Server.CPUSeconds <= 0 || p.Server.CPUMsPerOp <= 0 {
		t.Errorf("ours: server figures %+v", p.Server)
	}
	if cmp.Ours.EnrollmentsPerSecond <= 0 || cmp.Ours.ServerCPUMsPerEnrollment <= 0 || cmp.Ours.Failed != 0 {
		t.Errorf("ours: medians %+v", cmp.Ours)
	}

	// step-ca.
	if sc.Build == nil || sc.Build.How != "given" || sc.Build.Path != build.Path {
		t.Errorf("step-ca build %+v", sc.Build)
	}
	if ca := sc.CA; ca == nil || !strings.Contains(ca.Version, loadgen.StepCAVersion) || ca.PID <= 0 ||
		!strings.HasPrefix(ca.TLS, "TLS 1.3") || !strings.HasPrefix(ca.DB, "badgerv2") || !strings.HasPrefix(ca.URL, "https://127.0.0.1:") {
		t.Errorf("step-ca %+v", ca)
	}
	if len(sc.Runs) != 1 {
		t.Fatalf("%d step-ca runs, want 1", len(sc.Runs))
	}
	run0 := sc.Runs[0]
	if run0.Setup.Devices != n || run0.Setup.Concurrency != c || run0.Setup.Verify != rep.Setup.Verify || run0.Prepare.Count != n {
		t.Errorf("step-ca: setup %+v, prepare %+v (ours: %d devices, concurrency %d)", run0.Setup, run0.Prepare, n, c)
	}
	sp := run0.Phase
	if sp.Devices != n || sp.Succeeded != n || sp.Failed != 0 || len(sp.Errors) != 0 || sp.Retries.Total != 0 || sp.Tokens != 0 {
		t.Errorf("step-ca: %d/%d succeeded, %d failed, errors %v, %d retries, %d tokens in the phase", sp.Succeeded, sp.Devices, sp.Failed, sp.Errors, sp.Retries.Total, sp.Tokens)
	}
	for name, sm := range map[string]loadgen.Summary{"sign": sp.Sign, "verify": sp.Verify, "time to ready": sp.TimeToReady} {
		if sm.Count != n || sm.P50 <= 0 || sm.P50 > sm.P95 || sm.P95 > sm.P99 || sm.P99 > sm.Max {
			t.Errorf("step-ca %s: %+v", name, sm)
		}
	}
	if sp.Seconds <= 0 || sp.PerSecond <= 0 || run0.SignsPerSecond != sp.PerSecond {
		t.Errorf("step-ca: %v/s over %vs, headline %v/s", sp.PerSecond, sp.Seconds, run0.SignsPerSecond)
	}
	if sp.Server == nil || len(sp.Server.PIDs) != 1 || sp.Server.PIDs[0] != sc.CA.PID || sp.Server.CPUSeconds <= 0 ||
		sp.Server.CPUMsPerOp <= 0 || sp.Server.PeakRSSBytes == 0 || run0.ServerCPUMsPerSign != sp.Server.CPUMsPerOp {
		t.Errorf("step-ca: server figures %+v", sp.Server)
	}
	if sc.SignsPerSecond != run0.SignsPerSecond || sc.ServerCPUMsPerSign != run0.ServerCPUMsPerSign || sc.Failed != 0 {
		t.Errorf("step-ca medians %v/s, %v ms, %d failed; run %v/s, %v ms", sc.SignsPerSecond, sc.ServerCPUMsPerSign, sc.Failed, run0.SignsPerSecond, run0.ServerCPUMsPerSign)
	}
	if cmp.OursOverStepCA <= 0 || cmp.ServerCPUOursOverStepCA <= 0 {
		t.Errorf("ratios %v, %v", cmp.OursOverStepCA, cmp.ServerCPUOursOverStepCA)
	}
	t.Logf("ours %.1f enrollments/s (%.2f server ms each), step-ca %.1f signs/s (%.2f ms each): ours/step-ca %.2f (not asserted)",
		cmp.Ours.EnrollmentsPerSecond, cmp.Ours.ServerCPUMsPerEnrollment, sc.SignsPerSecond, sc.ServerCPUMsPerSign, cmp.OursOverStepCA)

	if got := len(s.devices(t)); got != n {
		t.Errorf("enrolld lists %d devices, want %d", got, n)
	}

	// The text output names both and the ratio.
	text, _ := run(t, false, bench, "stepca", "--step-ca-bin", build.Path, "--step-ca-db", "none", "-n", "10", "-c", "4")
	for _, want := range []string{"step-ca " + "Smallstep CA/" + loadgen.StepCAVersion, "db: none", "sign: 10/10 succeeded, 0 failed"} {
		if !strings.Contains(text, want) {
			t.Errorf("enroll-bench stepca output lacks %q:\n%s", want, text)
		}
	}
}

// TestStepCASkipped: when step-ca cannot be built, stepca says why, exits
// 0 and its JSON records the skip and no figures.
func TestStepCASkipped(t *testing.T) {
	bench := needBench(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A version that does not exist, with the module proxy off: go install
	// fails at once, offline.
	cmd := exec.CommandContext(ctx, bench, "stepca", "--step-ca-version", "v0.0.0-enroll-bench-none",
		"--step-ca-cache", t.TempDir(), "-n", "5", "-o", "json")
	cmd.Env = append(os.Environ(), "GOPROXY=off")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("enroll-bench stepca with an unbuildable step-ca: %v, want exit 0\nstdout:\n%s\nstderr:\n%s", err, o.String(), e.String())
	}
	var res loadgen.StepCAResult
	if err := json.Unmarshal(o.Bytes(), &res); err != nil {
		t.Fatalf("%v\n%s", err, o.String())
	}
	if !strings.Contains(res.Skipped, "v0.0.0-enroll-bench-none") || res.CA != nil || len(res.Runs) != 0 || res.SignsPerSecond != 0 {
		t.Errorf("skip result %+v", res)
	}
	if !strings.Contains(e.String(), "step-ca comparison skipped: ") {
		t.Errorf("stderr lacks the skip line:\n%s", e.String())
	}
}
