package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var errBucketNotFound = berrors.ErrBucketNotFound

// putDevice writes next and keeps the status index in step with it. prev is
// the record being replaced (nil if none).
func putDevice(tx *bolt.Tx, prev, next *Device) error {
	v, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("encoding device %s: %w", next.ID, err)
	}
	// The status index changes only with the status: rewriting an
	// unchanged key would still copy its page into the commit (every
	// renewal).
	if prev == nil || prev.Status != next.Status {
		idx := tx.Bucket(bucketStatusIndex)
		if prev != nil {
			if err := idx.Delete(statusKey(prev.Status, prev.ID)); err != nil {
				return err
			}
		}
		if err := idx.Put(statusKey(next.Status, next.ID), nil); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketDevices).Put([]byte(next.ID), v)
}

func deleteDevice(tx *bolt.Tx, d *Device) error {
	if err := tx.Bucket(bucketStatusIndex).Delete(statusKey(d.Status, d.ID)); err != nil {
		return err
	}
	return tx.Bucket(bucketDevices).Delete([]byte(d.ID))
}

func statusKey(status DeviceStatus, id string) []byte { return []byte(string(status) + "/" + id) }

func deviceCertKey(id, serial string) []byte { return []byte(id + "/" + serial) }

// putPrereg writes r (encoded as v) over prev and keeps the serial index:
// a serial belongs to one device; claiming another device's serial is
// ErrExists.
func putPrereg(tx *bolt.Tx, prev, r *Preregistration, v []byte) error {
	serials := tx.Bucket(bucketSerials)
	if r.Serial != "" {
		if owner := serials.Get([]byte(r.Serial)); owner != nil && string(owner) != r.DeviceID {
			return fmt.Errorf("serial %s is registered to device %s: %w", r.Serial, owner, ErrExists)
		}
	}
	if prev != nil && prev.Serial != "" && prev.Serial != r.Serial {
		if owner := serials.Get([]byte(prev.Serial)); string(owner) == r.DeviceID {
			if err := serials.Delete([]byte(prev.Serial)); err != nil {
				return err
			}
		}
	}
	if r.Serial != "" {
		if err := serials.Put([]byte(r.Serial), []byte(r.DeviceID)); err != nil {
			return err
		}
	}
	if v == nil {
		var err error
		if v, err = json.Marshal(r); err != nil {
			return fmt.Errorf("encoding pre-registration %s: %w", r.DeviceID, err)
		}
	}
	return tx.Bucket(bucketPrereg).Put([]byte(r.DeviceID), v)
}

func appendAudit(tx *bolt.Tx, recs ...*AuditRecord) error {
	b := tx.Bucket(bucketAudit)
	for _, r := range recs {
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		r.Seq = seq
		v, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encoding audit record: %w", err)
		}
		if err := b.Put(u64key(seq), v); err != nil {
			return err
		}
	}
	return nil
}

func u64key(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

// migrateV1 builds the schema 2 indexes from schema 1 records.
func migrateV1(tx *bolt.Tx) error {
	if err := tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
		var d Device
		if err := DecodeRecord(v, &d); err != nil {
			return fmt.Errorf("decoding device %s: %w", k, err)
		}
		return tx.Bucket(bucketStatusIndex).Put(statusKey(d.Status, d.ID), nil)
	}); err != nil {
		return err
	}
	if err := tx.Bucket(bucketCerts).ForEach(func(k, v []byte) error {
		var c IssuedCertificate
		if err := DecodeRecord(v, &c); err != nil {
			return fmt.Errorf("decoding certificate %s: %w", k, err)
		}
		return tx.Bucket(bucketDeviceCerts).Put(deviceCertKey(c.DeviceID, c.Serial), nil)
	}); err != nil {
		return err
	}
	return tx.Bucket(bucketPrereg).ForEach(func(k, v []byte) error {
		var p Preregistration
		if err := DecodeRecord(v, &p); err != nil {
			return fmt.Errorf("decoding pre-registration %s: %w", k, err)
		}
		if p.Serial == "" {
			return nil
		}
		return tx.Bucket(bucketSerials).Put([]byte(p.Serial), []byte(p.DeviceID))
	})
}

// AppendAudit implements Store.
func (s *Bolt) AppendAudit(ctx context.Context, recs ...*AuditRecord) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.write(func(tx *bolt.Tx) error { return appendAudit(tx, recs...) })
}

// AuditLog implements Store.
func (s *Bolt) AuditLog(ctx context.Context, after uint64, fn func(*AuditRecord) bool) error {
	return s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		start := after
		if start < math.MaxUint64 {
			start++
		}
		for k, v := c.Seek(u64key(start)); k != nil; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var r AuditRecord
			if err := DecodeRecord(v, &r); err != nil {
				return fmt.Errorf("decoding audit record %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if !fn(&r) {
				return nil
			}
		}
		return nil
	})
}

func getJSON[T any](b *bolt.Bucket, key []byte) (*T, error) {
	raw := b.Get(key)
	if raw == nil {
		return nil, nil
	}
	v := new(T)
	if err := DecodeRecord(raw, v); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", key, err)
	}
	return v, nil
}

// UpdateDevices implements Store.
func (s *Bolt) UpdateDevices(ctx context.Context, ids []string, fn func(id string, prev *Device) (*DeviceChange, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	type done struct {
		ch      *DeviceChange
		revoked []string
	}
	var results []done
	err := s.write(func(tx *bolt.Tx) error {
		results = results[:0]
		devices := tx.Bucket(bucketDevices)
		for _, id := range ids {
			prev, err := getJSON[Device](devices, []byte(id))
			if err != nil {
				return err
			}
			ch, err := fn(id, prev)
			if err != nil {
				return err
			}
			if ch == nil {
				continue
			}
			if ch.Device != nil {
				if ch.Device.ID != id {
					return fmt.Errorf("update of device %s wrote device %s", id, ch.Device.ID)
				}
				if err := putDevice(tx, prev, ch.Device); err != nil {
					return err
				}
			}
			var revoked []string
			if ch.Revoke != nil {
				if revoked, err = revokeCerts(tx, id, ch.Revoke); err != nil {
					return err
				}
			}
			if err := appendAudit(tx, ch.Audit...); err != nil {
				return err
			}
			results = append(results, done{ch, revoked})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range results {
		r.ch.Revoked = r.revoked
	}
	return nil
}

// revokeCerts revokes every certificate of device id not revoked yet and
// bumps nothing else: the caller signs a new CRL after the commit.
func revokeCerts(tx *bolt.Tx, id string, rev *Revocation) ([]string, error) {
	certs, revs := tx.Bucket(bucketCerts), tx.Bucket(bucketRevocations)
	prefix := []byte(id + "/")
	var out []string
	c := tx.Bucket(bucketDeviceCerts).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		serial := string(k[len(prefix):])
		if revs.Get([]byte(serial)) != nil {
			continue
		}
		cert, err := getJSON[IssuedCertificate](certs, []byte(serial))
		if err != nil {
			return nil, err
		}
		if cert == nil {
			return nil, fmt.Errorf("index names certificate %s of device %s, which is missing", serial, id)
		}
		cert.RevokedAt, cert.RevocationReason = rev.RevokedAt, rev.Reason
		cv, err := json.Marshal(cert)
		if err != nil {
			return nil, err
		}
		if err := certs.Put([]byte(serial), cv); err != nil {
			return nil, err
		}
		r := *rev
		r.Serial, r.DeviceID, r.NotAfter = serial, id, cert.NotAfter
		rv, err := json.Marshal(&r)
		if err != nil {
			return nil, err
		}
		if err := revs.Put([]byte(serial), rv); err != nil {
			return nil, err
		}
		out = append(out, serial)
	}
	return out, nil
}

// PutPending implements Store.
func (s *Bolt) PutPending(ctx context.Context, d *Device, max int, audit *AuditRecord) (*Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.Status != StatusPending {
		return nil, fmt.Errorf("PutPending of a device with status %q", d.Status)
	}
	var out *Device
	var outErr error
	err := s.write(func(tx *bolt.Tx) error {
		out, outErr = nil, nil
		prev, err := getJSON[Device](tx.Bucket(bucketDevices), []byte(d.ID))
		if err != nil {
			return err
		}
		switch {
		case prev != nil && prev.Status == StatusPending:
			next := *prev
			next.PendingExpiresAt, next.Info = d.PendingExpiresAt, d.Info
			out = &next
			return putDevice(tx, prev, &next)
		case prev != nil && prev.Status != StatusRefused:
			out, outErr = prev, ErrExists
			return nil
		}
		if n := countPrefix(tx.Bucket(bucketStatusIndex), []byte(string(StatusPending)+"/")); n >= max {
			outErr = ErrPendingFull
			return nil
		}
		rec := d
		if prev != nil {
			// A refused record keeps what measured boot saw.
			next := *d
			next.Firmware = prev.Firmware
			rec = &next
		}
		if err := putDevice(tx, prev, rec); err != nil {
			return err
		}
		if audit != nil {
			if err := appendAudit(tx, audit); err != nil {
				return err
			}
		}
		out = rec
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, outErr
}

func countPrefix(b *bolt.Bucket, prefix []byte) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	return n
}

// scanIndex walks the keys of index under prefix from start; each key's
// rest after prefix names a record in data, decoded as T and passed to fn
// until it returns false. A key naming a missing record is corruption.
func scanIndex[T any](ctx context.Context, index *bolt.Bucket, prefix, start []byte, data *bolt.Bucket, fn func(*T) bool) error {
	c := index.Cursor()
	for k, _ := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		rec, err := getJSON[T](data, k[len(prefix):])
		if err != nil {
			return err
		}
		if rec == nil {
			return fmt.Errorf("index %q names %s, which is missing", k[:len(prefix)], k[len(prefix):])
		}
		if !fn(rec) {
			return nil
		}
	}
	return nil
}

// DevicesByStatus implements Store.
func (s *Bolt) DevicesByStatus(ctx context.Context, status DeviceStatus, after string, fn func(*Device) bool) error {
	return s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(string(status) + "/")
		start := prefix
		if after != "" {
			start = append(statusKey(status, after), 0)
		}
		return scanIndex(ctx, tx.Bucket(bucketStatusIndex), prefix, start, tx.Bucket(bucketDevices), fn)
	})
}

// DevicesAfter implements Store.
func (s *Bolt) DevicesAfter(ctx context.Context, after string, fn func(*Device) bool) error {
	return s.db.View(func(tx *bolt.Tx) error { return scanAfter(ctx, tx.Bucket(bucketDevices), after, fn) })
}

// PurgeExpiredPending implements Store.
func (s *Bolt) PurgeExpiredPending(ctx context.Context, now time.Time, audit func(*Device) *AuditRecord) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = 0
		prefix := []byte(string(StatusPending) + "/")
		var expired []*Device
		c := tx.Bucket(bucketStatusIndex).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			d, err := getJSON[Device](tx.Bucket(bucketDevices), k[len(prefix):])
			if err != nil {
				return err
			}
			if d != nil && !now.Before(d.PendingExpiresAt) {
				expired = append(expired, d)
			}
		}
		for _, d := range expired {
			if err := deleteDevice(tx, d); err != nil {
				return err
			}
			if audit != nil {
				if rec := audit(d); rec != nil {
					if err := appendAudit(tx, rec); err != nil {
						return err
					}
				}
			}
			n++
		}
		return nil
	})
	return n, err
}

// Certificates implements Store.
func (s *Bolt) Certificates(ctx context.Context, deviceID, after string, fn func(*IssuedCertificate) bool) error {
	return s.db.View(func(tx *bolt.Tx) error {
		certs := tx.Bucket(bucketCerts)
		if deviceID == "" {
			return scanAfter(ctx, certs, after, fn)
		}
		prefix := []byte(deviceID + "/")
		start := prefix
		if after != "" {
			start = append(deviceCertKey(deviceID, after), 0)
		}
		return scanIndex(ctx, tx.Bucket(bucketDeviceCerts), prefix, start, certs, fn)
	})
}

// Revocations implements Store.
func (s *Bolt) Revocations(ctx context.Context, fn func(*Revocation) bool) error {
	return forEach(ctx, s.db, bucketRevocations, fn)
}

// NextCRLNumber implements Store.
func (s *Bolt) NextCRLNumber(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = counter(tx, keyCRLNumber) + 1
		return tx.Bucket(bucketMeta).Put(keyCRLNumber, u64key(n))
	})
	return n, err
}

// RevokeOperator implements Store.
func (s *Bolt) RevokeOperator(ctx context.Context, rev *OperatorRevocation, audit *AuditRecord) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if rev == nil || rev.Serial == "" {
		return false, fmt.Errorf("RevokeOperator needs a serial")
	}
	v, err := json.Marshal(rev)
	if err != nil {
		return false, fmt.Errorf("encoding operator revocation %s: %w", rev.Serial, err)
	}
	changed := false
	err = s.write(func(tx *bolt.Tx) error {
		changed = false
		b := tx.Bucket(bucketOperatorRevocations)
		if b.Get([]byte(rev.Serial)) != nil {
			return nil // revoked already: no record, no audit
		}
		if err := b.Put([]byte(rev.Serial), v); err != nil {
			return err
		}
		if audit != nil {
			if err := appendAudit(tx, audit); err != nil {
				return err
			}
		}
		changed = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return changed, nil
}

// OperatorRevocation implements Store.
func (s *Bolt) OperatorRevocation(ctx context.Context, serial string) (*OperatorRevocation, error) {
	var r OperatorRevocation
	if err := s.get(ctx, bucketOperatorRevocations, serial, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// OperatorRevocations implements Store.
func (s *Bolt) OperatorRevocations(ctx context.Context, fn func(*OperatorRevocation) bool) error {
	return forEach(ctx, s.db, bucketOperatorRevocations, fn)
}

func counter(tx *bolt.Tx, key []byte) uint64 {
	if v := tx.Bucket(bucketMeta).Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// preregReader is PreregReader over a transaction.
type preregReader struct{ tx *bolt.Tx }

func (r preregReader) Preregistration(id string) (*Preregistration, error) {
	return getJSON[Preregistration](r.tx.Bucket(bucketPrereg), []byte(id))
}

func (r preregReader) SerialOwner(serial string) (string, error) {
	return string(r.tx.Bucket(bucketSerials).Get([]byte(serial))), nil
}

func (r preregReader) Group(name string) (*Group, error) {
	return getJSON[Group](r.tx.Bucket(bucketGroups), []byte(name))
}

// Prefetch implements PreregReader: the transaction reads from memory.
func (preregReader) Prefetch([]*StagedRow) error { return nil }

func applyPreregPlan(tx *bolt.Tx, plan *PreregPlan) error {
	if plan == nil {
		return nil
	}
	// bbolt splits nodes only at commit, so keys put in random order into
	// one transaction cost O(n²) copying: write each bucket in key order.
	put := slices.Clone(plan.Put)
	sort.Slice(put, func(i, j int) bool { return put[i].DeviceID < put[j].DeviceID })
	prb, serials := tx.Bucket(bucketPrereg), tx.Bucket(bucketSerials)
	type serialPut struct{ serial, id string }
	var claims []serialPut
	var freed [][]byte
	for _, r := range put {
		prev, err := getJSON[Preregistration](prb, []byte(r.DeviceID))
		if err != nil {
			return err
		}
		if r.Serial != "" {
			if owner := serials.Get([]byte(r.Serial)); owner != nil && string(owner) != r.DeviceID {
				return fmt.Errorf("serial %s is registered to device %s: %w", r.Serial, owner, ErrExists)
			}
			claims = append(claims, serialPut{r.Serial, r.DeviceID})
		}
		if prev != nil && prev.Serial != "" && prev.Serial != r.Serial {
			freed = append(freed, []byte(prev.Serial))
		}
		v, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encoding pre-registration %s: %w", r.DeviceID, err)
		}
		if err := prb.Put([]byte(r.DeviceID), v); err != nil {
			return err
		}
	}
	for _, k := range freed {
		if err := serials.Delete(k); err != nil {
			return err
		}
	}
	sort.Slice(claims, func(i, j int) bool { return claims[i].serial < claims[j].serial })
	for i, c := range claims {
		if i > 0 && claims[i-1].serial == c.serial && claims[i-1].id != c.id {
			return fmt.Errorf("serial %s is claimed by devices %s and %s: %w", c.serial, claims[i-1].id, c.id, ErrExists)
		}
		if err := serials.Put([]byte(c.serial), []byte(c.id)); err != nil {
			return err
		}
	}
	return appendAudit(tx, plan.Audit...)
}

// MergePreregistrations implements Store.
func (s *Bolt) MergePreregistrations(ctx context.Context, plan func(PreregReader) (*PreregPlan, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		p, err := plan(preregReader{tx})
		if err != nil {
			return err
		}
		return applyPreregPlan(tx, p)
	})
}

var (
	keyBatch     = []byte("batch")
	bucketRowsIn = []byte("rows")
)

// CreateImport implements Store.
func (s *Bolt) CreateImport(ctx context.Context, b *ImportBatch, max, perOperator int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := json.Marshal(b)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		imports := tx.Bucket(bucketImports)
		var open OpenImports
		if err := imports.ForEachBucket(func(k []byte) error {
			ob, err := getJSON[ImportBatch](imports.Bucket(k), keyBatch)
			if err != nil {
				return err
			}
			if ob != nil {
				open.Add(b, ob)
			}
			return nil
		}); err != nil {
			return err
		}
		if err := open.Check(max, perOperator); err != nil {
			return err
		}
		if imports.Bucket([]byte(b.ID)) != nil {
			return fmt.Errorf("import %s: %w", b.ID, ErrExists)
		}
		ib, err := imports.CreateBucket([]byte(b.ID))
		if err != nil {
			return err
		}
		if _, err := ib.CreateBucket(bucketRowsIn); err != nil {
			return err
		}
		return ib.Put(keyBatch, v)
	})
}

// Import implements Store.
func (s *Bolt) Import(ctx context.Context, id string) (*ImportBatch, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *ImportBatch
	err := s.db.View(func(tx *bolt.Tx) error {
		ib := tx.Bucket(bucketImports).Bucket([]byte(id))
		if ib == nil {
			return ErrNotFound
		}
		var err error
		out, err = getJSON[ImportBatch](ib, keyBatch)
		return err
	})
	return out, err
}

// ListImports implements Store.
func (s *Bolt) ListImports(ctx context.Context, now time.Time, limit int) ([]*ImportBatch, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var open []*ImportBatch
	err := s.db.View(func(tx *bolt.Tx) error {
		imports := tx.Bucket(bucketImports)
		return imports.ForEachBucket(func(k []byte) error {
			b, err := getJSON[ImportBatch](imports.Bucket(k), keyBatch)
			if err != nil {
				return fmt.Errorf("import %s: %w", k, err)
			}
			if b != nil && now.Before(b.ExpiresAt) {
				open = append(open, b)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return OldestImports(open, limit), nil
}

// StageImport implements Store.
func (s *Bolt) StageImport(ctx context.Context, id string, now time.Time, rows []*StagedRow, rejected []RowError, maxRows int) (*ImportBatch, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	vals := make([][]byte, len(rows))
	for i, r := range rows {
		v, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		vals[i] = v
	}
	var out *ImportBatch
	err := s.db.Update(func(tx *bolt.Tx) error {
		ib := tx.Bucket(bucketImports).Bucket([]byte(id))
		if ib == nil {
			return ErrNotFound
		}
		b, err := getJSON[ImportBatch](ib, keyBatch)
		if err != nil {
			return err
		}
		if !now.Before(b.ExpiresAt) {
			return ErrImportExpired
		}
		if b.Staged+len(b.Rejected)+len(rows)+len(rejected) > maxRows {
			return fmt.Errorf("%w: more than %d rows", ErrImportTooLarge, maxRows)
		}
		rb := ib.Bucket(bucketRowsIn)
		for i, r := range rows {
			k := u64key(uint64(r.Line))
			if rb.Get(k) != nil {
				return fmt.Errorf("line %d: %w", r.Line, ErrExists)
			}
			if err := rb.Put(k, vals[i]); err != nil {
				return err
			}
		}
		b.Staged += len(rows)
		b.Rejected = append(b.Rejected, rejected...)
		v, err := json.Marshal(b)
		if err != nil {
			return err
		}
		out = b
		return ib.Put(keyBatch, v)
	})
	return out, err
}

// CommitImport implements Store.
func (s *Bolt) CommitImport(ctx context.Context, id string, now time.Time, plan func(*ImportBatch, []*StagedRow, PreregReader) (*PreregPlan, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		imports := tx.Bucket(bucketImports)
		ib := imports.Bucket([]byte(id))
		if ib == nil {
			return ErrNotFound
		}
		b, err := getJSON[ImportBatch](ib, keyBatch)
		if err != nil {
			return err
		}
		if !now.Before(b.ExpiresAt) {
			return ErrImportExpired
		}
		rows := make([]*StagedRow, 0, b.Staged)
		if err := ib.Bucket(bucketRowsIn).ForEach(func(k, v []byte) error {
			r := new(StagedRow)
			if err := DecodeRecord(v, r); err != nil {
				return fmt.Errorf("decoding staged line %d: %w", binary.BigEndian.Uint64(k), err)
			}
			rows = append(rows, r)
			return nil
		}); err != nil {
			return err
		}
		p, err := plan(b, rows, preregReader{tx})
		if err != nil {
			return err
		}
		if err := applyPreregPlan(tx, p); err != nil {
			return err
		}
		return imports.DeleteBucket([]byte(id))
	})
}

// DeleteImport implements Store.
func (s *Bolt) DeleteImport(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketImports).DeleteBucket([]byte(id))
		if errors.Is(err, errBucketNotFound) {
			return ErrNotFound
		}
		return err
	})
}

// PurgeExpiredImports implements Store.
func (s *Bolt) PurgeExpiredImports(ctx context.Context, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = 0
		imports := tx.Bucket(bucketImports)
		var expired [][]byte
		if err := imports.ForEachBucket(func(k []byte) error {
			b, err := getJSON[ImportBatch](imports.Bucket(k), keyBatch)
			if err != nil || b == nil || !now.Before(b.ExpiresAt) {
				expired = append(expired, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range expired {
			if err := imports.DeleteBucket(k); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// UpdateGroup implements Store.
func (s *Bolt) UpdateGroup(ctx context.Context, name string, fn func(prev *Group) (*Group, *AuditRecord, error)) (*Group, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *Group
	err := s.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGroups)
		prev, err := getJSON[Group](b, []byte(name))
		if err != nil {
			return err
		}
		next, audit, err := fn(prev)
		if err != nil {
			return err
		}
		if next.Name != name {
			return fmt.Errorf("update of group %s wrote group %s", name, next.Name)
		}
		v, err := json.Marshal(next)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(name), v); err != nil {
			return err
		}
		if audit != nil {
			if err := appendAudit(tx, audit); err != nil {
				return err
			}
		}
		out = next
		return nil
	})
	return out, err
}

// Group implements Store.
func (s *Bolt) Group(ctx context.Context, name string) (*Group, error) {
	var g Group
	if err := s.get(ctx, bucketGroups, name, &g); err != nil {
		return nil, err
	}
	return &g, nil
}

// Groups implements Store.
func (s *Bolt) Groups(ctx context.Context, fn func(*Group) bool) error {
	return forEach(ctx, s.db, bucketGroups, fn)
}

func configKey(scope string, version uint64) []byte {
	return append([]byte(scope+"\x00"), u64key(version)...)
}

func latestConfig(tx *bolt.Tx, scope string) (*ConfigVersion, error) {
	c := tx.Bucket(bucketConfigs).Cursor()
	prefix := []byte(scope + "\x00")
	k, v := c.Seek(configKey(scope, math.MaxUint64))
	if k == nil || !bytes.Equal(k, configKey(scope, math.MaxUint64)) {
		k, v = c.Prev()
	}
	if k == nil || !bytes.HasPrefix(k, prefix) || len(k) != len(prefix)+8 {
		return nil, nil
	}
	cv := new(ConfigVersion)
	if err := DecodeRecord(v, cv); err != nil {
		return nil, fmt.Errorf("decoding config %s: %w", scope, err)
	}
	return cv, nil
}

// PutConfig implements Store.
func (s *Bolt) PutConfig(ctx context.Context, scope string, floor uint64, fn func(latest *ConfigVersion, next uint64) (*ConfigVersion, *AuditRecord, error)) (*ConfigVersion, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *ConfigVersion
	err := s.write(func(tx *bolt.Tx) error {
		latest, err := latestConfig(tx, scope)
		if err != nil {
			return err
		}
		next := max(counter(tx, keyConfigSeq), floor) + 1
		cv, audit, err := fn(latest, next)
		if err != nil {
			return err
		}
		if cv.Version != next || cv.Scope != scope {
			return fmt.Errorf("config of %s wrote %s version %d, want version %d", scope, cv.Scope, cv.Version, next)
		}
		v, err := json.Marshal(cv)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketConfigs).Put(configKey(scope, next), v); err != nil {
			return err
		}
		if err := tx.Bucket(bucketMeta).Put(keyConfigSeq, u64key(next)); err != nil {
			return err
		}
		if audit != nil {
			if err := appendAudit(tx, audit); err != nil {
				return err
			}
		}
		out = cv
		return nil
	})
	return out, err
}

// Config implements Store.
func (s *Bolt) Config(ctx context.Context, scope string, version uint64) (*ConfigVersion, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *ConfigVersion
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if version == 0 {
			out, err = latestConfig(tx, scope)
		} else {
			out, err = getJSON[ConfigVersion](tx.Bucket(bucketConfigs), configKey(scope, version))
		}
		if err == nil && out == nil {
			return ErrNotFound
		}
		return err
	})
	return out, err
}

// ConfigHistory implements Store.
func (s *Bolt) ConfigHistory(ctx context.Context, scope string, fn func(*ConfigVersion) bool) error {
	return s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(scope + "\x00")
		c := tx.Bucket(bucketConfigs).Cursor()
		k, v := c.Seek(configKey(scope, math.MaxUint64))
		if k == nil || !bytes.Equal(k, configKey(scope, math.MaxUint64)) {
			k, v = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, v = c.Prev() {
			if err := ctx.Err(); err != nil {
				return err
			}
			cv := new(ConfigVersion)
			if err := DecodeRecord(v, cv); err != nil {
				return fmt.Errorf("decoding config %s: %w", scope, err)
			}
			if !fn(cv) {
				return nil
			}
		}
		return nil
	})
}

// Stats implements Store.
func (s *Bolt) Stats(ctx context.Context) (*Stats, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st := &Stats{Devices: map[DeviceStatus]int{}}
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, status := range Statuses() {
			st.Devices[status] = countPrefix(tx.Bucket(bucketStatusIndex), []byte(string(status)+"/"))
		}
		st.Preregistrations = tx.Bucket(bucketPrereg).Stats().KeyN
		st.Certificates = tx.Bucket(bucketCerts).Stats().KeyN
		st.Revocations = tx.Bucket(bucketRevocations).Stats().KeyN
		st.AuditRecords = tx.Bucket(bucketAudit).Sequence()
		st.CRLNumber = counter(tx, keyCRLNumber)
		return nil
	})
	return st, err
}
