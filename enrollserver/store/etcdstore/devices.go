package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// putDevice writes next over prev (nil if none) and keeps the status
// index in step, as bbolt's putDevice.
func putDevice(t *txn, prev, next *store.Device) error {
	if prev != nil && prev.Status != next.Status {
		t.del(t.s.k.status(prev.Status, prev.ID))
	}
	t.put(t.s.k.status(next.Status, next.ID), "")
	return t.putJSON(t.s.k.device(next.ID), next)
}

func deleteDevice(t *txn, d *store.Device) {
	t.del(t.s.k.status(d.Status, d.ID))
	t.del(t.s.k.device(d.ID))
}

// Device implements store.Store.
func (s *Store) Device(ctx context.Context, id string) (*store.Device, error) {
	return getJSON[store.Device](ctx, s, s.k.device(id))
}

// Devices implements store.Store. Each page is read at its own revision:
// a device written during a long listing may or may not be listed.
func (s *Store) Devices(ctx context.Context, fn func(*store.Device) bool) error {
	return s.DevicesAfter(ctx, "", fn)
}

// DevicesAfter implements store.Store.
func (s *Store) DevicesAfter(ctx context.Context, after string, fn func(*store.Device) bool) error {
	start := s.k.devices()
	if after != "" {
		start = s.k.device(after) + "\x00"
	}
	return scanJSON(ctx, s, start, end(s.k.devices()), fn)
}

// Certificate implements store.Store.
func (s *Store) Certificate(ctx context.Context, serial string) (*store.IssuedCertificate, error) {
	return getJSON[store.IssuedCertificate](ctx, s, s.k.cert(serial))
}

// DevicesByStatus implements store.Store.
func (s *Store) DevicesByStatus(ctx context.Context, status store.DeviceStatus, after string, fn func(*store.Device) bool) error {
	prefix := s.k.statusPrefix(status)
	start := prefix
	if after != "" {
		start = s.k.status(status, after) + "\x00"
	}
	return scanIndex(ctx, s, prefix, start, end(prefix), s.k.devices(), fn)
}

// Certificates implements store.Store.
func (s *Store) Certificates(ctx context.Context, deviceID, after string, fn func(*store.IssuedCertificate) bool) error {
	if deviceID == "" {
		start := s.k.certs()
		if after != "" {
			start = s.k.cert(after) + "\x00"
		}
		return scanJSON(ctx, s, start, end(s.k.certs()), fn)
	}
	prefix := s.k.devCerts(deviceID)
	start := prefix
	if after != "" {
		start = s.k.devCert(deviceID, after) + "\x00"
	}
	return scanIndex(ctx, s, prefix, start, end(prefix), s.k.certs(), fn)
}

// Revocations implements store.Store.
func (s *Store) Revocations(ctx context.Context, fn func(*store.Revocation) bool) error {
	return scanJSON(ctx, s, s.k.revocations(), end(s.k.revocations()), fn)
}

// AppendAudit implements store.Store (at most MaxTxnOps-1 records).
func (s *Store) AppendAudit(ctx context.Context, recs ...*store.AuditRecord) error {
	return s.update(ctx, func(t *txn) error {
		t.appendAudit(recs...)
		return nil
	})
}

// AuditLog implements store.Store. Sequence numbers come from one
// counter bumped in the same transaction as the records, so the log is
// dense and in commit order across every server sharing the prefix.
func (s *Store) AuditLog(ctx context.Context, after uint64, fn func(*store.AuditRecord) bool) error {
	if after == math.MaxUint64 {
		return s.begin(ctx)
	}
	return scanJSON(ctx, s, s.k.audit(after+1), end(s.k.auditAll()), fn)
}

// NextCRLNumber implements store.Store.
func (s *Store) NextCRLNumber(ctx context.Context) (uint64, error) {
	var n uint64
	err := s.update(ctx, func(t *txn) error {
		kv, err := t.getOne(s.k.meta("crl_number"))
		if err != nil {
			return err
		}
		if n, err = parseCounter(kv); err != nil {
			return err
		}
		n++
		t.put(s.k.meta("crl_number"), fmt.Sprint(n))
		return nil
	})
	return n, err
}

// Stats implements store.Store: count-only reads in one read-only
// transaction (one consistent revision); no value is transferred.
func (s *Store) Stats(ctx context.Context) (*store.Stats, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	statuses := store.Statuses()
	var ops []clientv3.Op
	for _, st := range statuses {
		p := s.k.statusPrefix(st)
		ops = append(ops, clientv3.OpGet(p, clientv3.WithRange(end(p)), clientv3.WithCountOnly()))
	}
	for _, p := range []string{s.k.preregs(), s.k.certs(), s.k.revocations()} {
		ops = append(ops, clientv3.OpGet(p, clientv3.WithRange(end(p)), clientv3.WithCountOnly()))
	}
	ops = append(ops, clientv3.OpGet(s.k.meta("audit_seq")), clientv3.OpGet(s.k.meta("crl_number")))
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(rctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("counting records: %w", err)
	}
	rr := func(i int) *clientv3.GetResponse {
		return (*clientv3.GetResponse)(resp.Responses[i].GetResponseRange())
	}
	st := &store.Stats{Devices: map[store.DeviceStatus]int{}}
	for i, status := range statuses {
		st.Devices[status] = int(rr(i).Count)
	}
	i := len(statuses)
	st.Preregistrations, st.Certificates, st.Revocations = int(rr(i).Count), int(rr(i+1).Count), int(rr(i+2).Count)
	counter := func(r *clientv3.GetResponse) (uint64, error) {
		if len(r.Kvs) == 0 {
			return 0, nil
		}
		return parseCounter(r.Kvs[0])
	}
	if st.AuditRecords, err = counter(rr(i + 3)); err != nil {
		return nil, err
	}
	if st.CRLNumber, err = counter(rr(i + 4)); err != nil {
		return nil, err
	}
	return st, nil
}

// revokeCerts revokes, in t, up to limit certificates of device id not
// revoked yet (limit < 0: all) and reports whether more remain.
//
// The device's certificate index is a guarded range read. The
// certificate and revocation records are read at that read's revision
// and guarded by a compare over all revocations: a certificate record
// changes only when it is revoked (which writes a revocation) or is new
// (which writes the device's index), so no change to what this read can
// go unnoticed. Concurrent revocations of other devices conflict and
// retry: revocations are rare operator actions.
func revokeCerts(t *txn, id string, rev *store.Revocation, limit int) (revoked []string, more bool, err error) {
	s := t.s
	prefix := s.k.devCerts(id)
	var serials []string
	if err := t.scan(prefix, end(prefix), true, func(kv *mvccpb.KeyValue) (bool, error) {
		serials = append(serials, string(kv.Key[len(prefix):]))
		return true, nil
	}); err != nil {
		return nil, false, err
	}
	if len(serials) == 0 {
		return nil, false, nil
	}
	at := t.ranges[len(t.ranges)-1].rev
	t.guard(s.k.revocations(), end(s.k.revocations()), at)
	ks := make([]string, 0, 2*len(serials))
	for _, serial := range serials {
		ks = append(ks, s.k.cert(serial), s.k.revocation(serial))
	}
	kvs, err := s.getMany(t.ctx, ks, at)
	if err != nil {
		return nil, false, err
	}
	for i, serial := range serials {
		certKV, revKV := kvs[2*i], kvs[2*i+1]
		if w, ok := t.writes[s.k.revocation(serial)]; revKV != nil || (ok && !w.del) {
			continue
		}
		if certKV == nil {
			return nil, false, fmt.Errorf("index names certificate %s of device %s, which is missing", serial, id)
		}
		if limit >= 0 && len(revoked) == limit {
			return revoked, true, nil
		}
		cert, err := decode[store.IssuedCertificate](certKV)
		if err != nil {
			return nil, false, err
		}
		cert.RevokedAt, cert.RevocationReason = rev.RevokedAt, rev.Reason
		if err := t.putJSON(s.k.cert(serial), cert); err != nil {
			return nil, false, err
		}
		r := *rev
		r.Serial, r.DeviceID, r.NotAfter = serial, id, cert.NotAfter
		if err := t.putJSON(s.k.revocation(serial), &r); err != nil {
			return nil, false, err
		}
		revoked = append(revoked, serial)
	}
	return revoked, false, nil
}

// updateOne applies fn to one device in t.
func updateOne(t *txn, id string, fn func(id string, prev *store.Device) (*store.DeviceChange, error)) (*store.DeviceChange, []string, error) {
	prev, err := txnGet[store.Device](t, t.s.k.device(id))
	if err != nil {
		return nil, nil, err
	}
	ch, err := fn(id, prev)
	if err != nil || ch == nil {
		return nil, nil, err
	}
	if ch.Device != nil {
		if ch.Device.ID != id {
			return nil, nil, fmt.Errorf("update of device %s wrote device %s", id, ch.Device.ID)
		}
		if err := putDevice(t, prev, ch.Device); err != nil {
			return nil, nil, err
		}
	}
	var revoked []string
	if ch.Revoke != nil {
		if revoked, _, err = revokeCerts(t, id, ch.Revoke, -1); err != nil {
			return nil, nil, err
		}
	}
	t.appendAudit(ch.Audit...)
	return ch, revoked, nil
}

type changeDone struct {
	ch      *store.DeviceChange
	revoked []string
}

// UpdateDevices implements store.Store.
//
// Atomicity: when the whole update fits one etcd transaction (MaxTxnOps
// operations: a few devices, or one device with a few dozen
// certificates to revoke) it is one transaction, as in bbolt. A larger
// one is committed in chunks, each atomic for the devices it holds
// (record, indexes, revocations and audit records together):
//   - fn runs over every device first, without writing: an error from fn
//     then writes nothing;
//   - then each chunk re-reads its devices and runs fn again: if fn now
//     fails (a device changed meanwhile), the earlier chunks stay
//     written, with their audit records, and the error is returned;
//   - a device with more certificates to revoke than fit one transaction
//     has them revoked first, in chunks (revoking twice is a no-op), then
//     its record and the rest: an interruption leaves extra
//     certificates revoked, never a revoked device with live ones.
func (s *Store) UpdateDevices(ctx context.Context, ids []string, fn func(id string, prev *store.Device) (*store.DeviceChange, error)) error {
	var results []changeDone
	err := s.update(ctx, func(t *txn) error {
		results = results[:0]
		for _, id := range ids {
			ch, revoked, err := updateOne(t, id, fn)
			if err != nil {
				return err
			}
			if ch != nil {
				results = append(results, changeDone{ch, revoked})
			}
		}
		if t.ops() > MaxTxnOps {
			return ErrTooManyOps
		}
		return nil
	})
	if errors.Is(err, ErrTooManyOps) {
		results, err = s.updateDevicesChunked(ctx, ids, fn)
	}
	for _, r := range results {
		r.ch.Revoked = r.revoked
	}
	return err
}

func (s *Store) updateDevicesChunked(ctx context.Context, ids []string, fn func(id string, prev *store.Device) (*store.DeviceChange, error)) ([]changeDone, error) {
	// 1. fn over every device, nothing written.
	revokes := map[string]*store.Revocation{}
	for i := 0; i < len(ids); i += maxReadOps {
		chunk := ids[i:min(len(ids), i+maxReadOps)]
		names := make([]string, len(chunk))
		for j, id := range chunk {
			names[j] = s.k.device(id)
		}
		kvs, err := s.getMany(ctx, names, 0)
		if err != nil {
			return nil, err
		}
		for j, kv := range kvs {
			var prev *store.Device
			if kv != nil {
				if prev, err = decode[store.Device](kv); err != nil {
					return nil, err
				}
			}
			ch, err := fn(chunk[j], prev)
			if err != nil {
				return nil, err
			}
			if ch != nil && ch.Revoke != nil {
				revokes[chunk[j]] = ch.Revoke
			}
		}
	}
	// 2. Certificates beyond one transaction's worth go first.
	pre := map[string][]string{}
	for _, id := range ids {
		if rev, ok := revokes[id]; ok {
			serials, err := s.preRevoke(ctx, id, rev)
			if err != nil {
				return nil, err
			}
			pre[id] = append(pre[id], serials...)
		}
	}
	// 3. Chunks of whole devices, as many as fit a transaction.
	var out []changeDone
	for next := 0; next < len(ids); {
		var done []changeDone
		var n int
		err := s.update(ctx, func(t *txn) error {
			done, n = done[:0], 0
			for _, id := range ids[next:] {
				sp := t.mark()
				ch, revoked, err := updateOne(t, id, fn)
				if err != nil {
					return err
				}
				if t.ops() > MaxTxnOps {
					if n == 0 {
						return fmt.Errorf("device %s: %w", id, ErrTooManyOps)
					}
					t.rollback(sp)
					break
				}
				n++
				if ch != nil {
					if ch.Revoke != nil {
						// pre is read, not consumed: this closure
						// runs again after a conflict.
						revoked = slices.Concat(pre[id], revoked)
					}
					done = append(done, changeDone{ch, revoked})
				}
			}
			return nil
		})
		if err != nil {
			return out, err
		}
		out = append(out, done...)
		next += n
	}
	return out, nil
}

// preRevoke revokes the certificates of device id that would not fit
// one transaction with the device's own change, a chunk per transaction,
// leaving the last chunk to that transaction. It returns the serials it
// revoked.
func (s *Store) preRevoke(ctx context.Context, id string, rev *store.Revocation) ([]string, error) {
	var all []string
	for {
		var more bool
		var serials []string
		err := s.update(ctx, func(t *txn) error {
			var err error
			sp := t.mark()
			serials, more, err = revokeCerts(t, id, rev, revokeChunk)
			if err == nil && !more {
				t.rollback(sp) // few enough: the device's transaction takes them
				serials = nil
			}
			return err
		})
		if err != nil || !more {
			return all, err
		}
		all = append(all, serials...)
	}
}

// PutPending implements store.Store. The cap is checked with a
// count-only read of the pending index, guarded as a range: a pending
// record added meanwhile by another server re-runs the check (one
// removed meanwhile cannot make the answer wrong).
func (s *Store) PutPending(ctx context.Context, d *store.Device, max int, audit *store.AuditRecord) (*store.Device, error) {
	if d.Status != store.StatusPending {
		return nil, fmt.Errorf("PutPending of a device with status %q", d.Status)
	}
	var out *store.Device
	var outErr error
	err := s.update(ctx, func(t *txn) error {
		out, outErr = nil, nil
		prev, err := txnGet[store.Device](t, s.k.device(d.ID))
		if err != nil {
			return err
		}
		switch {
		case prev != nil && prev.Status == store.StatusPending:
			next := *prev
			next.PendingExpiresAt, next.Info = d.PendingExpiresAt, d.Info
			out = &next
			return putDevice(t, prev, &next)
		case prev != nil && prev.Status != store.StatusRefused:
			out, outErr = prev, store.ErrExists
			return nil
		}
		p := s.k.statusPrefix(store.StatusPending)
		n, err := t.count(p, end(p))
		if err != nil {
			return err
		}
		if n >= int64(max) {
			outErr = store.ErrPendingFull
			return nil
		}
		rec := d
		if prev != nil {
			// A refused record keeps what measured boot saw.
			next := *d
			next.Firmware = prev.Firmware
			rec = &next
		}
		if err := putDevice(t, prev, rec); err != nil {
			return err
		}
		if audit != nil {
			t.appendAudit(audit)
		}
		out = rec
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, outErr
}

// PurgeExpiredPending implements store.Store. It lists the pending index
// page by page and deletes the expired records in transactions of a few
// devices each (a device and its audit record together); each re-reads
// its devices, so one decided meanwhile is kept.
func (s *Store) PurgeExpiredPending(ctx context.Context, now time.Time, audit func(*store.Device) *store.AuditRecord) (int, error) {
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	var expired []string
	if err := s.DevicesByStatus(ctx, store.StatusPending, "", func(d *store.Device) bool {
		if !now.Before(d.PendingExpiresAt) {
			expired = append(expired, d.ID)
		}
		return true
	}); err != nil {
		return 0, err
	}
	n := 0
	for i := 0; i < len(expired); i += purgeDevicesPerTxn {
		chunk := expired[i:min(len(expired), i+purgeDevicesPerTxn)]
		var k int
		err := s.update(ctx, func(t *txn) error {
			k = 0
			names := make([]string, len(chunk))
			for j, id := range chunk {
				names[j] = s.k.device(id)
			}
			kvs, err := t.get(names...)
			if err != nil {
				return err
			}
			for _, kv := range kvs {
				if kv == nil {
					continue
				}
				d, err := decode[store.Device](kv)
				if err != nil {
					return err
				}
				if d.Status != store.StatusPending || now.Before(d.PendingExpiresAt) {
					continue
				}
				deleteDevice(t, d)
				if audit != nil {
					if rec := audit(d); rec != nil {
						t.appendAudit(rec)
					}
				}
				k++
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}
