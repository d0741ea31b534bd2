// Package etcdstore is the etcd v3 implementation of store.Store, for
// enrollment servers that share one state: any number of servers may
// open the same cluster and key prefix. It passes the conformance suite
// in storetest with the bbolt store's semantics (the same sentinels,
// listing orders, and "an error from the caller's function writes
// nothing"), and adds store.ConfigWatcher (an etcd watch).
//
// # Trust boundary
//
// The store trusts the etcd cluster and everyone who can write under its
// prefix as fully as the bbolt store trusts its file: whoever can write
// there can forge device records, certificates records and audit
// records. Restrict the prefix to the servers' etcd user with etcd's
// RBAC, use etcds:// (TLS) and Options.Username/Password (never in the
// URL, which the parser refuses) or client certificates in Options.TLS.
// Values are the store package's structs as JSON, decoded without
// further validation: they are not attacker input unless the cluster is
// compromised. The store holds no secret (sessions keep a hash of the
// expected proof, as in bbolt).
//
// # Transactions
//
// Every method that writes is one etcd transaction guarded by compares
// on what it read (txn.go: optimistic, re-run on conflict, so the
// caller's closures may run more than once and must be pure), except
// where etcd's cap on operations per transaction (MaxTxnOps) forces
// chunks; each such method documents what stays atomic:
//   - PutPreregistrations, MergePreregistrations, StageImport,
//     CommitImport: all or nothing through a journal with one commit
//     point, under a cluster-wide lock (bulk.go); not isolated from
//     readers while a committed journal is applied;
//   - UpdateDevices beyond one transaction: atomic per chunk of devices;
//   - PurgeExpiredSessions, PurgeExpiredPending: atomic per page.
//
// The audit log is one counter key bumped in the same transaction as the
// records it numbers: sequence numbers are dense and in commit order
// across every server.
//
// # What it does not do
//
// It does not create or migrate data of the bbolt store (there is no
// import from a bbolt file), does not compact etcd (configure the
// cluster's auto-compaction), and never writes outside its prefix.
package etcdstore
