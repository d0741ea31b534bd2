package etcdstore

import "time"

// Caps and defaults of the etcd store, all in one place.
const (
	// PageSize is how many keys one range read of a listing returns: a
	// listing never loads a whole collection, and checks ctx between
	// pages.
	PageSize = 500

	// MaxTxnOps is the most operations one transaction may carry, counted
	// as etcd counts them (compares, and the writes of the nested commit
	// transaction). It is etcd's default --max-txn-ops (128); a cluster
	// configured lower refuses our transactions with "too many operations
	// in txn request".
	MaxTxnOps = 128
	// MaxTxnBytes bounds the encoded size of one transaction, below
	// etcd's default --max-request-bytes (1.5 MiB) with room for gRPC
	// framing. Bulk writes are split into chunks under it.
	MaxTxnBytes = 1 << 20
	// MaxValueBytes bounds one stored value (a staged import's record
	// with its row errors is the one that grows).
	MaxValueBytes = 1 << 20

	// maxReadOps bounds the keys one batched read (a read-only
	// transaction of Gets) asks for.
	maxReadOps = MaxTxnOps

	// MaxTxnAttempts bounds how often a transaction whose reads changed
	// under it is re-run before the call fails with ErrConflict.
	MaxTxnAttempts = 64
	// maxSeqRetries bounds how often one commit is re-sent with a fresh
	// audit sequence number (the counter moved, nothing else did).
	maxSeqRetries = 256
	// conflictBackoff is the base of the jittered pause between attempts
	// that conflicted: it grows linearly with the attempt, up to
	// maxConflictBackoff.
	conflictBackoff    = time.Millisecond
	maxConflictBackoff = 50 * time.Millisecond

	// DefaultDialTimeout bounds connecting to the cluster.
	DefaultDialTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds each request to etcd (a page, a
	// transaction); a call of several requests gets it for each.
	DefaultRequestTimeout = 10 * time.Second

	// DefaultSessionLeaseBucket is the width of the expiry buckets that
	// share one lease: sessions expiring within the same bucket are
	// attached to one lease, so a busy server grants about one lease per
	// bucket, not one per session. The lease outlives every session of
	// its bucket; ExpiresAt is checked exactly in code.
	DefaultSessionLeaseBucket = 5 * time.Second
	// DefaultSessionLeaseGrace is added to a session's lifetime before
	// etcd deletes it (clock skew between servers and etcd; a completed
	// marker shares the session's lease).
	DefaultSessionLeaseGrace = 5 * time.Second
	// MaxSessionLease bounds the lease of one session (a session without
	// CreatedAt, or with an absurd lifetime). PurgeExpiredSessions still
	// deletes it at its ExpiresAt.
	MaxSessionLease = 24 * time.Hour

	// bulkLockTTL is the lease TTL, in seconds, of the lock that
	// serialises pre-registration and import writes; it is kept alive
	// while held, so it only matters when a holder dies.
	bulkLockTTL = 15
	// leadTTL is the lease TTL, in seconds, behind a held role (Lead):
	// a server that stops reaching etcd loses its role within it, and
	// another server takes over.
	leadTTL = 10
	// DefaultBulkLockWait bounds the wait for that lock.
	DefaultBulkLockWait = 30 * time.Second
	// journalChunkOps is how many writes one journal chunk (and so one
	// roll-forward transaction) carries.
	journalChunkOps = MaxTxnOps - 8

	// maxBatch bounds the transactions one group commit carries
	// (groupcommit.go); MaxTxnOps bounds it too.
	maxBatch = 32
	// purgeSessionsPerTxn and purgeDevicesPerTxn are how many expired
	// sessions (a guarded delete each) and pending devices (two deletes,
	// a compare and an audit record each) one purge transaction removes.
	purgeSessionsPerTxn = MaxTxnOps / 2
	purgeDevicesPerTxn  = MaxTxnOps / 8
	// revokeChunk is how many certificates one revocation transaction
	// revokes ahead of a device's own change (two writes each).
	revokeChunk = MaxTxnOps / 4

	// prefetchParallel is how many batched reads CommitImport runs at once
	// while prefetching the records its rows name.
	prefetchParallel = 4

	// watchRetryDelay is the pause before a config watch that ended with
	// an error is resumed.
	watchRetryDelay = 200 * time.Millisecond
)
