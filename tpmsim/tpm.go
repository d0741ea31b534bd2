//go:build cgo

package tpmsim

import (
	"fmt"
	"sync"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpmutil"
)

// TPM is the in-process Microsoft reference simulator as a go-attestation
// command channel (attest.CommandChannelTPM20: io.ReadWriteCloser plus
// MeasurementLog) and a go-tpm transport.TPM (Send).
//
// Only one TPM may be open per process: Open blocks while another is open,
// until that one is closed. A TPM is not safe for concurrent use: a command
// is a Write followed by a Read, and two goroutines interleaving them would
// swap responses. An internal mutex only guarantees that the C simulator never
// runs two commands at once (which would corrupt its memory and kill the
// process); it does not make concurrent use correct.
type TPM struct {
	mu     sync.Mutex
	sim    *simulator.Simulator
	log    []byte
	closed bool
}

// Open manufactures a fresh simulated TPM and starts it up. A seed of 0 gives
// random hierarchy seeds (a new EK every time); any other seed derives every
// hierarchy seed from it, so the same seed yields the same EK across
// Close/Open (stable device identity in a demo, golden files in tests). The
// seeded form is insecure by construction.
//
// Open blocks while another TPM is open in this process. NV contents (such as
// a provisioned EK certificate) do not survive Close: provision again after
// each Open.
func Open(seed int64) (*TPM, error) {
	var (
		sim *simulator.Simulator
		err error
	)
	if seed == 0 {
		sim, err = simulator.Get()
	} else {
		sim, err = simulator.GetWithFixedSeedInsecure(seed)
	}
	if err != nil {
		return nil, fmt.Errorf("starting simulator: %w", err)
	}
	return &TPM{sim: sim}, nil
}

// Send runs one raw TPM command and returns the raw response. It implements
// go-tpm's transport.TPM.
func (t *TPM) Send(cmd []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	return tpmutil.RunCommandRaw(t.sim, cmd)
}

// Write submits one raw TPM command; Read returns its response.
func (t *TPM) Write(cmd []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, ErrClosed
	}
	return t.sim.Write(cmd)
}

// Read returns the response to the last command written.
func (t *TPM) Read(rsp []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, ErrClosed
	}
	return t.sim.Read(rsp)
}

// Reset reboots the simulated TPM: PCRs and transient objects are cleared,
// NV (including an EK certificate) and persistent objects survive.
func (t *TPM) Reset() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	return t.sim.Reset()
}

// Close shuts the simulator down and lets another Open proceed. Closing
// twice returns ErrClosed.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	t.closed = true
	return t.sim.Close()
}

// SetMeasurementLog sets the TCG event log that MeasurementLog returns. A
// simulator has no firmware, so tests that exercise measured boot build their
// own log and extend the same digests into the PCRs.
func (t *TPM) SetMeasurementLog(log []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.log = append([]byte(nil), log...)
}

// MeasurementLog returns the log set with SetMeasurementLog, or nil.
func (t *TPM) MeasurementLog() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.log == nil {
		return nil, nil
	}
	return append([]byte(nil), t.log...), nil
}
