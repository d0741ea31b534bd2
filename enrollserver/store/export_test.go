package store

import bolt "go.etcd.io/bbolt"

// BoltTxStats exposes bbolt's transaction counters to the benchmarks.
func BoltTxStats(s *Bolt) bolt.TxStats { return s.db.Stats().TxStats }
