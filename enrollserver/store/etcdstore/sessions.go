package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// CreateSession implements store.Store. The session is attached to a
// shared lease (lease.go).
func (s *Store) CreateSession(ctx context.Context, sess *store.Session) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	v, err := encode(sess)
	if err != nil {
		return fmt.Errorf("encoding session: %w", err)
	}
	key := s.k.session(sess.ID)
	// Twice at most: a lease etcd forgot is granted again.
	for try := 0; ; try++ {
		lease, err := s.sessionLease(ctx, s.sessionLeaseTTL(sess))
		if err != nil {
			return err
		}
		rctx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, v, clientv3.WithLease(lease))).Commit()
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && try == 0 {
			s.dropLease(lease)
			continue
		}
		if err != nil {
			return fmt.Errorf("writing session %s: %w", sess.ID, err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("session %s: %w", sess.ID, store.ErrExists)
		}
		return nil
	}
}

// Session implements store.Store.
func (s *Store) Session(ctx context.Context, id string, now time.Time) (*store.Session, error) {
	sess, err := getJSON[store.Session](ctx, s, s.k.session(id))
	if err != nil {
		return nil, err
	}
	if !now.Before(sess.ExpiresAt) {
		return nil, store.ErrSessionExpired
	}
	return sess, nil
}

// completed is the record of a consumed session (as in bbolt).
type completed struct {
	DeviceID  string    `json:"device_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// FinishEnrollment implements store.Store: one transaction deletes the
// session, writes the completed marker (on the session's lease), the
// device and its status index, the certificate and its device index, and
// the audit record. Two servers finishing one session race on the
// session's ModRevision: one commits, the other re-reads and finds no
// session (ErrSessionUsed).
func (s *Store) FinishEnrollment(ctx context.Context, id string, now time.Time, cert *store.IssuedCertificate, apply func(prev *store.Device) (*store.Device, *store.AuditRecord, error)) (*store.Device, error) {
	certVal, err := encode(cert)
	if err != nil {
		return nil, fmt.Errorf("encoding certificate record: %w", err)
	}
	var out *store.Device
	err = s.update(ctx, func(t *txn) error {
		out = nil
		kv, err := t.getOne(s.k.session(id))
		if err != nil {
			return err
		}
		if kv == nil {
			return store.ErrSessionUsed
		}
		sess, err := decode[store.Session](kv)
		if err != nil {
			return fmt.Errorf("decoding session %s: %w", id, err)
		}
		if !now.Before(sess.ExpiresAt) {
			return store.ErrSessionExpired
		}
		kvs, err := t.get(s.k.device(sess.DeviceID), s.k.cert(cert.Serial))
		if err != nil {
			return err
		}
		var prev *store.Device
		if kvs[0] != nil {
			if prev, err = decode[store.Device](kvs[0]); err != nil {
				return err
			}
		}
		next, audit, err := apply(prev)
		if err != nil {
			return err
		}
		if next.ID != sess.DeviceID {
			return fmt.Errorf("finish of session %s wrote device %s, want %s", id, next.ID, sess.DeviceID)
		}
		if kvs[1] != nil {
			return fmt.Errorf("certificate serial %s: %w", cert.Serial, store.ErrExists)
		}
		t.del(s.k.session(id))
		done, err := encode(completed{DeviceID: sess.DeviceID, ExpiresAt: sess.ExpiresAt})
		if err != nil {
			return err
		}
		t.putLease(s.k.completed(id), done, clientv3.LeaseID(kv.Lease))
		if err := putDevice(t, prev, next); err != nil {
			return err
		}
		t.put(s.k.cert(cert.Serial), certVal)
		t.put(s.k.devCert(cert.DeviceID, cert.Serial), "")
		if audit != nil {
			t.appendAudit(audit)
		}
		out = next
		return nil
	})
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// The session's lease ended between the read and the commit:
		// the session is gone.
		return nil, store.ErrSessionUsed
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CompletedSession implements store.Store.
func (s *Store) CompletedSession(ctx context.Context, id string) (string, error) {
	c, err := getJSON[completed](ctx, s, s.k.completed(id))
	if err != nil {
		return "", err
	}
	return c.DeviceID, nil
}

// PurgeExpiredSessions implements store.Store. etcd deletes sessions
// whose lease ended by itself; this deletes, page by page, those whose
// ExpiresAt passed at now (the caller's clock) before that. Each deletion
// is guarded by the ModRevision read, so a session finished meanwhile is
// not counted. It is not one transaction: each page is.
func (s *Store) PurgeExpiredSessions(ctx context.Context, now time.Time) (int, error) {
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	n := 0
	for _, prefix := range []string{s.k.sessions(), s.k.completedAll()} {
		var batch []*mvccpb.KeyValue
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			ops := make([]clientv3.Op, len(batch))
			for i, kv := range batch {
				ops[i] = clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)},
					[]clientv3.Op{clientv3.OpDelete(string(kv.Key))}, nil)
			}
			rctx, cancel := s.reqCtx(ctx)
			resp, err := s.cli.Txn(rctx).Then(ops...).Commit()
			cancel()
			if err != nil {
				return fmt.Errorf("purging sessions: %w", err)
			}
			if prefix == s.k.sessions() {
				for _, r := range resp.Responses {
					if r.GetResponseTxn().Succeeded {
						n++
					}
				}
			}
			batch = batch[:0]
			return nil
		}
		err := s.scan(ctx, prefix, end(prefix), func(kv *mvccpb.KeyValue) (bool, error) {
			var rec struct {
				ExpiresAt time.Time `json:"expires_at"`
			}
			if err := store.DecodeRecord(kv.Value, &rec); err != nil || !now.Before(rec.ExpiresAt) {
				batch = append(batch, kv)
			}
			if len(batch) == purgeSessionsPerTxn {
				return true, flush()
			}
			return true, nil
		})
		if err == nil {
			err = flush()
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
