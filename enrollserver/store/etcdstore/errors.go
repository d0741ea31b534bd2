package etcdstore

import "errors"

// Errors of the etcd store, besides the store package's sentinels that
// every method returns as the bbolt store does. Check them with errors.Is.
var (
	// ErrInvalidURL: Open was given a URL it cannot use.
	ErrInvalidURL = errors.New("etcdstore: invalid store URL")

	// ErrConflict: a transaction's reads kept changing under it for
	// MaxTxnAttempts attempts. Nothing was written; the call may be
	// retried.
	ErrConflict = errors.New("etcdstore: transaction kept conflicting")

	// ErrTooManyOps: one atomic write needs more than MaxTxnOps
	// operations or MaxTxnBytes bytes and the method has no chunked form.
	// Nothing was written.
	ErrTooManyOps = errors.New("etcdstore: transaction too large for etcd")
)
