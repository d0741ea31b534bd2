package etcdstore

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestSessionLeaseHonoursContext: a session waiting for its bucket's lease
// grant, in flight for another caller, stops waiting when its context
// ends, and no lock is held across the grant.
func TestSessionLeaseHonoursContext(t *testing.T) {
	const width = time.Hour // one bucket for the whole test
	s := &Store{opts: &Options{SessionLeaseBucket: width}, leases: map[int64]clientv3.LeaseID{}}
	ttl := time.Minute
	bucket := (time.Now().Add(ttl).UnixNano() + int64(width) - 1) / int64(width)
	release := make(chan struct{})
	defer close(release)
	s.leaseGrants.DoChan(strconv.FormatInt(bucket, 10), func() (any, error) {
		<-release // a grant that does not come back
		return clientv3.NoLease, errors.New("released")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.sessionLease(ctx, ttl)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("sessionLease = %v, want the context's deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sessionLease still waiting 5 s after its context ended")
	}
	if !s.leaseMu.TryLock() {
		t.Fatal("leaseMu held while a grant is in flight")
	}
	s.leaseMu.Unlock()
}
