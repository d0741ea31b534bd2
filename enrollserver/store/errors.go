package store

import "errors"

// Errors returned by Store methods. Check them with errors.Is.
var (
	// ErrNotFound: the record does not exist.
	ErrNotFound = errors.New("store: not found")

	// ErrSessionUsed: FinishEnrollment found no live session of that ID:
	// it was never created, already consumed, or purged after expiry.
	ErrSessionUsed = errors.New("store: session unknown or already used")

	// ErrSessionExpired: the session exists but its TTL has passed.
	ErrSessionExpired = errors.New("store: session expired")

	// ErrExists: a create found a record of the same key with different
	// content.
	ErrExists = errors.New("store: record exists")

	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")

	// ErrTooManySessions: CreateSession found the live sessions at their
	// cap (Options.MaxMemorySessions): the device should retry later.
	ErrTooManySessions = errors.New("store: too many live sessions")
)

// Errors of the fleet-operation methods.
var (
	// ErrPendingFull: PutPending found the pending list at its cap.
	ErrPendingFull = errors.New("store: pending device list is full")
	// ErrTooManyImports: CreateImport found MaxOpen imports staged.
	ErrTooManyImports = errors.New("store: too many open imports")
	// ErrOperatorImports: CreateImport found the operator's share of the
	// open imports taken.
	ErrOperatorImports = errors.New("store: the operator has too many open imports")
	// ErrImportExpired: the staged import's TTL has passed.
	ErrImportExpired = errors.New("store: import expired")
	// ErrImportTooLarge: staging more rows would exceed the import's cap.
	ErrImportTooLarge = errors.New("store: import too large")
)
