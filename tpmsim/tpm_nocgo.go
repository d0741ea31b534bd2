//go:build !cgo

package tpmsim

// TPM is the in-process reference simulator; without cgo it cannot run, and
// Open always returns ErrCgoRequired.
type TPM struct{}

// Open returns ErrCgoRequired: the simulator is C code.
func Open(seed int64) (*TPM, error) { return nil, ErrCgoRequired }

// Send returns ErrCgoRequired.
func (t *TPM) Send(cmd []byte) ([]byte, error) { return nil, ErrCgoRequired }

// Write returns ErrCgoRequired.
func (t *TPM) Write(cmd []byte) (int, error) { return 0, ErrCgoRequired }

// Read returns ErrCgoRequired.
func (t *TPM) Read(rsp []byte) (int, error) { return 0, ErrCgoRequired }

// Reset returns ErrCgoRequired.
func (t *TPM) Reset() error { return ErrCgoRequired }

// Close returns ErrCgoRequired.
func (t *TPM) Close() error { return ErrCgoRequired }

// SetMeasurementLog does nothing.
func (t *TPM) SetMeasurementLog(log []byte) {}

// MeasurementLog returns ErrCgoRequired.
func (t *TPM) MeasurementLog() ([]byte, error) { return nil, ErrCgoRequired }
