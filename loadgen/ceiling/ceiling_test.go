package ceiling_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/loadgen/ceiling"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

func newFixture(tb testing.TB) *ceiling.Fixture {
	tb.Helper()
	fx, err := ceiling.NewFixture(tb.TempDir())
	if errors.Is(err, tpmsim.ErrCgoRequired) {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return fx
}

// TestMeasure: every step runs on real evidence, the sum is the steps
// marked in it, and a run's figures compare.
func TestMeasure(t *testing.T) {
	r, err := ceiling.Measure(context.Background(), ceiling.Options{Duration: 20 * time.Millisecond, Dir: t.TempDir()})
	if errors.Is(err, tpmsim.ErrCgoRequired) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"ek-chain", "make-credential", "quote", "key-certification", "csr", "issue", "bundle", "tls-server-auth/default"}
	var sum float64
	names := map[string]bool{}
	for _, s := range r.Steps {
		names[s.Name] = true
		if s.CPUMicros <= 0 || s.Ops <= 0 {
			t.Errorf("step %s: %v µs over %d ops", s.Name, s.CPUMicros, s.Ops)
		}
		if s.InSum {
			sum += s.CPUMicros
		}
	}
	for _, n := range want {
		if !names[n] {
			t.Errorf("no step %s", n)
		}
	}
	if r.SumMicros <= 0 || r.SumMicros < sum*0.99 || r.SumMicros > sum*1.01 {
		t.Errorf("sum %v µs, steps in the sum add to %v", r.SumMicros, sum)
	}
	if r.PerSecond <= 0 {
		t.Errorf("ceiling %v/s", r.PerSecond)
	}
	r.Compare(r.PerSecond/4, 2*1e-3*r.SumMicros)
	if c := r.Against; c.ObservedRatio < 0.24 || c.ObservedRatio > 0.26 || c.CapacityRatio < 0.49 || c.CapacityRatio > 0.51 {
		t.Errorf("comparison %+v, want observed 25%% and capacity 50%%", c)
	}
	var out bytes.Buffer
	r.WriteText(&out)
	for _, s := range []string{"sum per enrollment", "ceiling:", "of the ceiling"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("text lacks %q:\n%s", s, out.String())
		}
	}
}

// BenchmarkCeiling times each step of one enrollment's server-side
// cryptography; cpu-ns/op is the server thread's CPU time:
//
//	go test -run '^$' -bench Ceiling ./loadgen/ceiling
func BenchmarkCeiling(b *testing.B) {
	fx := newFixture(b)
	for _, s := range fx.Steps {
		b.Run(s.Name, func(b *testing.B) {
			cpu, err := s.Run(b.N)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}
