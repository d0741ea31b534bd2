package tpmdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"
)

// DefaultEventLogPath is where Linux exposes the firmware's TCG event log.
const DefaultEventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// MaxEventLogBytes caps the measurement log read from disk.
const MaxEventLogBytes = 4 << 20

// Channel adapts a transport.TPMCloser to go-attestation's
// CommandChannelTPM20. Write sends one command and Read returns its
// response; a mutex makes each Write/Read pair exclusive, so callers that
// share a Channel across goroutines must still hold Lock around a
// multi-command sequence (go-attestation issues several commands per call).
type Channel struct {
	mu       sync.Mutex
	tpm      transport.TPMCloser
	resp     []byte
	logPath  string
	isClosed bool
}

// NewChannel wraps t. eventLogPath is the measurement log MeasurementLog
// returns ("" means none).
func NewChannel(t transport.TPMCloser, eventLogPath string) *Channel {
	return &Channel{tpm: t, logPath: eventLogPath}
}

// Write sends one TPM command.
func (c *Channel) Write(cmd []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosed {
		return 0, os.ErrClosed
	}
	resp, err := c.tpm.Send(cmd)
	if err != nil {
		return 0, err
	}
	c.resp = resp
	return len(cmd), nil
}

// Read returns the response to the last command.
func (c *Channel) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.resp) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.resp)
	c.resp = c.resp[n:]
	return n, nil
}

// Close closes the underlying transport.
func (c *Channel) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isClosed {
		return nil
	}
	c.isClosed = true
	return c.tpm.Close()
}

// MeasurementLog reads the TCG event log, or returns nil if none is
// configured or the file does not exist (software TPMs have no firmware).
func (c *Channel) MeasurementLog() ([]byte, error) {
	if c.logPath == "" {
		return nil, nil
	}
	f, err := os.Open(c.logPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading event log: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxEventLogBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading event log %s: %w", c.logPath, err)
	}
	if len(b) > MaxEventLogBytes {
		return nil, fmt.Errorf("event log %s exceeds %d bytes", c.logPath, MaxEventLogBytes)
	}
	return b, nil
}
