package tpmsim

import "errors"

// ErrCgoRequired is returned by Open when the package was built without cgo:
// the reference simulator is C code.
var ErrCgoRequired = errors.New("tpmsim needs cgo: build with CGO_ENABLED=1 and gcc + libssl-dev")

// ErrClosed is returned when a closed TPM is used.
var ErrClosed = errors.New("tpmsim: TPM is closed")
