package loadgen_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/loadgen"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// TestCompare runs Compare end to end, with worker processes and a real
// server core over TLS, and a stub crypto ceiling that answers a different
// figure after each round: the rounds alternate the servers' order, every
// run enrolls devices no other run used, and each run is set against the
// ceiling of its own round. When a ceiling measurement fails, the runs are
// kept without ratios.
func TestCompare(t *testing.T) {
	openProver(t, 1, nil).Close() // skips without cgo
	mfrDir := t.TempDir()
	mfr, err := tpmsim.LoadOrCreateManufacturer(mfrDir)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, mfr)
	rootFile := filepath.Join(t.TempDir(), "root_ca.crt")
	if err := os.WriteFile(rootFile, s.rootPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	// One server under two names, so the log tells the order apart.
	a, b := s.url, strings.Replace(s.url, "127.0.0.1", "localhost", 1)
	const n, rounds = 4, 3

	compare := func(t *testing.T, ceiling func(context.Context) (float64, error)) (*loadgen.Comparison, string) {
		t.Helper()
		var log strings.Builder
		cmp, err := loadgen.Compare(context.Background(), loadgen.CompareConfig{
			Bench: loadgen.BenchConfig{RootCAFile: rootFile, ManufacturerDir: mfrDir, Workers: 1, WorkerCommand: workerCommand,
				ServerPID: os.Getpid(), Devices: n, Stderr: &log,
				Run: loadgen.Config{Concurrency: 2, Verify: true, PhaseTimeout: time.Minute,
					Retry: loadgen.RetryPolicy{Attempts: 3, Base: time.Millisecond, Max: 5 * time.Millisecond}}},
			ServerURLs: []string{a, b}, Rounds: rounds, Ceiling: ceiling,
		})
		if err != nil {
			t.Fatal(err)
		}
		return cmp, log.String()
	}

	t.Run("ceiling per round", func(t *testing.T) {
		ceilings := []float64{1000, 2000, 4000}
		calls := 0
		cmp, log := compare(t, func(context.Context) (float64, error) {
			calls++
			return ceilings[calls-1], nil
		})
		if !slices.Equal(cmp.CeilingMicros, ceilings) || cmp.CeilingError != "" {
			t.Fatalf("ceilings %v (error %q), want %v", cmp.CeilingMicros, cmp.CeilingError, ceilings)
		}
		var order []string
		for _, line := range strings.Split(log, "\n") {
			if strings.HasPrefix(line, "round ") {
				order = append(order, line)
			}
		}
		wantOrder := []string{"round 1/3: " + a, "round 1/3: " + b, "round 2/3: " + b, "round 2/3: " + a, "round 3/3: " + a, "round 3/3: " + b}
		if !slices.Equal(order, wantOrder) {
			t.Errorf("run order\n%s\nwant\n%s", strings.Join(order, "\n"), strings.Join(wantOrder, "\n"))
		}
		if cmp.Identities.Count != n*2*rounds {
			t.Errorf("%d identities, want %d: one set per run", cmp.Identities.Count, n*2*rounds)
		}
		for _, res := range cmp.Results {
			if len(res.Runs) != rounds || res.Failed != 0 || len(res.CeilingRatios) != rounds {
				t.Fatalf("%s: %d runs, %d failed, ratios %v", res.Server, len(res.Runs), res.Failed, res.CeilingRatios)
			}
			for k, rep := range res.Runs {
				if rep.Phases[0].Succeeded != n {
					t.Errorf("%s run %d: %d enrolled, want %d", res.Server, k, rep.Phases[0].Succeeded, n)
				}
				// Run k against round k's ceiling (ratios are rounded to
				// 3 places); a run too short for the CPU clock's 10 ms
				// ticks has no figure and ratio 0.
				cpu, want := rep.ServerCPUMsPerEnrollment, 0.0
				if cpu > 0 {
					want = ceilings[k] / 1000 / cpu
				}
				if abs(res.CeilingRatios[k]-want) > 0.0006 {
					t.Errorf("%s run %d: ratio %v, want %v (ceiling %v µs, server %v ms)", res.Server, k, res.CeilingRatios[k], want, ceilings[k], cpu)
				}
			}
		}
	})

	t.Run("ceiling fails", func(t *testing.T) {
		calls := 0
		cmp, _ := compare(t, func(context.Context) (float64, error) {
			calls++
			if calls == 2 {
				return 0, errors.New("no CPU time left (test)")
			}
			return 1000, nil
		})
		if calls != 2 || cmp.CeilingMicros != nil || !strings.Contains(cmp.CeilingError, "after round 2") {
			t.Errorf("%d ceiling calls, ceilings %v, error %q; want two calls, none kept, the round named", calls, cmp.CeilingMicros, cmp.CeilingError)
		}
		for _, res := range cmp.Results {
			if len(res.Runs) != rounds || res.CeilingRatios != nil {
				t.Errorf("%s: %d runs, ratios %v; want every run kept, without ratios", res.Server, len(res.Runs), res.CeilingRatios)
			}
		}
	})
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
