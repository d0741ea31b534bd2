package firmware_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/edgeenroll/edgeenroll/firmware"
	"github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// update rewrites the golden files in testdata/ (and the seed corpus of
// FuzzParseMeasurements) from the generator:
//
//	go test ./firmware -run TestGolden -update
var update = flag.Bool("update", false, "rewrite testdata golden files from eventlogtest")

// The simulator is a process-wide singleton that must never be used from two
// goroutines: TestMain opens one TPM for the whole test binary, and the tests
// that use it run sequentially (no t.Parallel), reset it before use and close
// every AK they create.
var (
	sim    *tpmsim.TPM
	simErr error
)

const simSeed = 20250101

func TestMain(m *testing.M) {
	flag.Parse()
	sim, simErr = tpmsim.Open(simSeed)
	code := m.Run()
	if sim != nil {
		if err := sim.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "firmware tests: closing the simulator: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// needTPM returns the shared simulator, skipping without cgo.
func needTPM(tb testing.TB) *tpmsim.TPM {
	tb.Helper()
	if sim == nil {
		if errors.Is(simErr, tpmsim.ErrCgoRequired) {
			tb.Skipf("no simulated TPM: %v", simErr)
		}
		tb.Fatalf("no simulated TPM: %v", simErr)
	}
	return sim
}

// replay parses and replays a generated log against its own final PCRs.
func replay(tb testing.TB, l *eventlogtest.Log) *firmware.Measurements {
	tb.Helper()
	lg, err := firmware.ParseMeasurements(l.Bytes())
	if err != nil {
		tb.Fatalf("ParseMeasurements: %v", err)
	}
	m, err := lg.Replay(l.PCRs(), nil)
	if err != nil {
		tb.Fatalf("Replay: %v", err)
	}
	return m
}

// defaultReference approves the default generated firmware.
func defaultReference(tb testing.TB) firmware.Reference {
	tb.Helper()
	r, err := firmware.NewReference("edgeenroll test firmware 1.0.0", replay(tb, eventlogtest.New(nil)))
	if err != nil {
		tb.Fatalf("NewReference: %v", err)
	}
	return r
}

// wantReason fails unless err carries reason want in an error of the
// expected type: *ReplayError for malformed, event_log_mismatch and (from
// Replay) pcr_not_quoted, *PolicyError otherwise.
func wantReason(tb testing.TB, err error, want firmware.Reason, policy bool) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("accepted, want refusal %q", want)
	}
	if got := firmware.ReasonOf(err); got != want {
		tb.Fatalf("reason = %q, want %q (error: %v)", got, want, err)
	}
	if policy {
		var pe *firmware.PolicyError
		if !errors.As(err, &pe) || !errors.Is(err, &firmware.PolicyError{Reason: want}) {
			tb.Fatalf("error %v (%T) is not a *PolicyError with reason %q", err, err, want)
		}
	} else {
		var re *firmware.ReplayError
		if !errors.As(err, &re) || !errors.Is(err, &firmware.ReplayError{Reason: want}) {
			tb.Fatalf("error %v (%T) is not a *ReplayError with reason %q", err, err, want)
		}
	}
	tb.Logf("refused: %v", err)
}

func clonePCRs(m map[int][]byte) map[int][]byte {
	c := make(map[int][]byte, len(m))
	for i, d := range m {
		c[i] = bytes.Clone(d)
	}
	return c
}
