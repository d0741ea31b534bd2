package etcdstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Session leases. etcd deletes a session (and its completed marker) when
// its lease expires, so abandoned sessions cost nothing to purge. Sessions
// whose leases would end within the same SessionLeaseBucket share one
// lease, granted for the end of the bucket: a server grants about one
// lease per bucket, whatever its enrollment rate. The lease only bounds
// how long the record is kept: whether a session is live is decided in
// code from its ExpiresAt and the caller's now, exactly as in bbolt.

// sessionLeaseTTL is how long etcd keeps a session: its lifetime
// (ExpiresAt - CreatedAt, on the server's clock) plus the grace.
func (s *Store) sessionLeaseTTL(sess *store.Session) time.Duration {
	life := sess.ExpiresAt.Sub(sess.CreatedAt)
	if sess.CreatedAt.IsZero() || life > MaxSessionLease {
		life = MaxSessionLease
	}
	return max(life, 0) + s.opts.SessionLeaseGrace
}

// sessionLease returns a lease that lasts at least ttl from now. One
// grant per bucket is in flight at a time, outside leaseMu; a caller whose
// ctx ends stops waiting for it.
func (s *Store) sessionLease(ctx context.Context, ttl time.Duration) (clientv3.LeaseID, error) {
	width := s.opts.SessionLeaseBucket
	now := time.Now()
	bucket := (now.Add(ttl).UnixNano() + int64(width) - 1) / int64(width)
	s.leaseMu.Lock()
	if id, ok := s.leases[bucket]; ok {
		s.leaseMu.Unlock()
		return id, nil
	}
	for b := range s.leases {
		// A bucket whose end passed has an expired lease.
		if time.Unix(0, b*int64(width)).Before(now) {
			delete(s.leases, b)
		}
	}
	s.leaseMu.Unlock()
	grant := s.leaseGrants.DoChan(strconv.FormatInt(bucket, 10), func() (any, error) {
		until := time.Unix(0, bucket*int64(width)).Sub(time.Now())
		secs := int64((until + time.Second - 1) / time.Second)
		// Shared by every caller waiting for this bucket: its own
		// request timeout, not one caller's context.
		rctx, cancel := s.reqCtx(context.Background())
		defer cancel()
		resp, err := s.cli.Grant(rctx, secs)
		if err != nil {
			return clientv3.NoLease, fmt.Errorf("granting a %ds session lease: %w", secs, err)
		}
		s.leaseMu.Lock()
		s.leases[bucket] = resp.ID
		s.leaseMu.Unlock()
		return resp.ID, nil
	})
	select {
	case r := <-grant:
		return r.Val.(clientv3.LeaseID), r.Err
	case <-ctx.Done():
		return clientv3.NoLease, ctx.Err()
	}
}

// dropLease forgets a lease etcd no longer knows (revoked, or expired
// early because a clock jumped).
func (s *Store) dropLease(id clientv3.LeaseID) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	for b, l := range s.leases {
		if l == id {
			delete(s.leases, b)
		}
	}
}
