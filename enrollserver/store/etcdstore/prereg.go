package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Preregistration implements store.Store.
func (s *Store) Preregistration(ctx context.Context, deviceID string) (*store.Preregistration, error) {
	return getJSON[store.Preregistration](ctx, s, s.k.prereg(deviceID))
}

// Preregistrations implements store.Store.
func (s *Store) Preregistrations(ctx context.Context, fn func(*store.Preregistration) bool) error {
	return scanJSON(ctx, s, s.k.preregs(), end(s.k.preregs()), fn)
}

// withBulk runs fn with the bulk lock held, again (at most
// MaxTxnAttempts times) while it returns errRetry.
func (s *Store) withBulk(ctx context.Context, fn func(b *bulk, r *preregReader) error) error {
	b, err := s.lockBulk(ctx, false)
	if err != nil {
		return err
	}
	defer b.unlock()
	for range MaxTxnAttempts {
		err := fn(b, &preregReader{s: s, ctx: ctx, cache: map[string]*mvccpb.KeyValue{}})
		if !errors.Is(err, errRetry) {
			return err
		}
	}
	return fmt.Errorf("%d attempts: %w", MaxTxnAttempts, ErrConflict)
}

// preregReader is store.PreregReader over current reads with the bulk
// lock held (so pre-registrations and serials cannot change under it),
// caching what it read.
type preregReader struct {
	s     *Store
	ctx   context.Context
	mu    sync.Mutex
	cache map[string]*mvccpb.KeyValue // nil: absent
}

// prefetch reads the keys not cached yet, in parallel batches.
func (r *preregReader) prefetch(keys []string) error {
	var missing []string
	seen := map[string]bool{}
	for _, k := range keys {
		if _, ok := r.cache[k]; !ok && !seen[k] {
			seen[k] = true
			missing = append(missing, k)
		}
	}
	sem := make(chan struct{}, prefetchParallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := 0; i < len(missing); i += maxReadOps {
		batch := missing[i:min(len(missing), i+maxReadOps)]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			kvs, err := r.s.getMany(r.ctx, batch, 0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = cmpErr(firstErr, err)
				return
			}
			r.mu.Lock()
			for j, kv := range kvs {
				r.cache[batch[j]] = kv
			}
			r.mu.Unlock()
		}()
	}
	wg.Wait()
	return firstErr
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

func (r *preregReader) get(key string) (*mvccpb.KeyValue, error) {
	r.mu.Lock()
	kv, ok := r.cache[key]
	r.mu.Unlock()
	if ok {
		return kv, nil
	}
	if err := r.prefetch([]string{key}); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cache[key], nil
}

func readerJSON[T any](r *preregReader, key string) (*T, error) {
	kv, err := r.get(key)
	if err != nil || kv == nil {
		return nil, err
	}
	return decode[T](kv)
}

func (r *preregReader) Preregistration(id string) (*store.Preregistration, error) {
	return readerJSON[store.Preregistration](r, r.s.k.prereg(id))
}

func (r *preregReader) SerialOwner(serial string) (string, error) {
	kv, err := r.get(r.s.k.serial(serial))
	if err != nil || kv == nil {
		return "", err
	}
	return string(kv.Value), nil
}

func (r *preregReader) Group(name string) (*store.Group, error) {
	return readerJSON[store.Group](r, r.s.k.group(name))
}

// Prefetch implements store.PreregReader: the rows' pre-registrations,
// serials and groups, in parallel batches of reads.
func (r *preregReader) Prefetch(rows []*store.StagedRow) error {
	keys := make([]string, 0, 2*len(rows))
	groups := map[string]bool{}
	for _, row := range rows {
		keys = append(keys, r.s.k.prereg(row.DeviceID))
		if row.Serial != "" {
			keys = append(keys, r.s.k.serial(row.Serial))
		}
		if row.Group != "" && !groups[row.Group] {
			groups[row.Group] = true
			keys = append(keys, r.s.k.group(row.Group))
		}
	}
	return r.prefetch(keys)
}

// opList is writes with one op per key (the last wins), in first-write
// order: etcd refuses a transaction naming a key twice.
type opList struct {
	ops []bulkOp
	at  map[string]int
}

func (l *opList) add(o bulkOp) {
	if l.at == nil {
		l.at = map[string]int{}
	}
	if i, ok := l.at[o.Key]; ok {
		l.ops[i] = o
		return
	}
	l.at[o.Key] = len(l.ops)
	l.ops = append(l.ops, o)
}

func (l *opList) put(key, val string) { l.add(bulkOp{Key: key, Val: val}) }
func (l *opList) del(key string)      { l.add(bulkOp{Key: key, Del: true}) }

// PutPreregistrations implements store.Store: all or nothing (bulk.go),
// with the same serial rules as bbolt (a serial belongs to one device).
func (s *Store) PutPreregistrations(ctx context.Context, regs []*store.Preregistration) error {
	vals := make([]string, len(regs))
	for i, r := range regs {
		v, err := encode(r)
		if err != nil {
			return fmt.Errorf("encoding pre-registration %s: %w", r.DeviceID, err)
		}
		vals[i] = v
	}
	return s.withBulk(ctx, func(b *bulk, rd *preregReader) error {
		var keys []string
		for _, r := range regs {
			keys = append(keys, s.k.prereg(r.DeviceID))
			if r.Serial != "" {
				keys = append(keys, s.k.serial(r.Serial))
			}
		}
		if err := rd.prefetch(keys); err != nil {
			return err
		}
		// Later rows see earlier ones, as in one bbolt transaction.
		preregs := map[string]*store.Preregistration{}
		serials := map[string]*string{} // serial → owner (nil: deleted)
		owner := func(serial string) (string, error) {
			if o, ok := serials[serial]; ok {
				if o == nil {
					return "", nil
				}
				return *o, nil
			}
			return rd.SerialOwner(serial)
		}
		var l opList
		for i, r := range regs {
			prev, ok := preregs[r.DeviceID]
			if !ok {
				var err error
				if prev, err = rd.Preregistration(r.DeviceID); err != nil {
					return err
				}
			}
			if prev != nil && store.SamePreregistration(prev, r) {
				continue // re-import of the same row: no-op
			}
			if r.Serial != "" {
				o, err := owner(r.Serial)
				if err != nil {
					return err
				}
				if o != "" && o != r.DeviceID {
					return fmt.Errorf("serial %s is registered to device %s: %w", r.Serial, o, store.ErrExists)
				}
			}
			if prev != nil && prev.Serial != "" && prev.Serial != r.Serial {
				if o, err := owner(prev.Serial); err != nil {
					return err
				} else if o == r.DeviceID {
					serials[prev.Serial] = nil
					l.del(s.k.serial(prev.Serial))
				}
			}
			if r.Serial != "" {
				id := r.DeviceID
				serials[r.Serial] = &id
				l.put(s.k.serial(r.Serial), r.DeviceID)
			}
			preregs[r.DeviceID] = r
			l.put(s.k.prereg(r.DeviceID), vals[i])
		}
		return b.write(ctx, l.ops, nil, nil, nil)
	})
}

// preregPlanOps turns a plan into writes with bbolt's applyPreregPlan
// rules: a serial claimed by another device, or by two devices of the
// plan, is ErrExists; a device changing serial frees its old one.
func (s *Store) preregPlanOps(rd *preregReader, plan *store.PreregPlan) ([]bulkOp, error) {
	if plan == nil {
		return nil, nil
	}
	put := slices.Clone(plan.Put)
	sort.Slice(put, func(i, j int) bool { return put[i].DeviceID < put[j].DeviceID })
	var keys []string
	for _, r := range put {
		keys = append(keys, s.k.prereg(r.DeviceID))
		if r.Serial != "" {
			keys = append(keys, s.k.serial(r.Serial))
		}
	}
	if err := rd.prefetch(keys); err != nil {
		return nil, err
	}
	type claim struct{ serial, id string }
	var claims []claim
	var freed []string
	var l opList
	for _, r := range put {
		prev, err := rd.Preregistration(r.DeviceID)
		if err != nil {
			return nil, err
		}
		if r.Serial != "" {
			owner, err := rd.SerialOwner(r.Serial)
			if err != nil {
				return nil, err
			}
			if owner != "" && owner != r.DeviceID {
				return nil, fmt.Errorf("serial %s is registered to device %s: %w", r.Serial, owner, store.ErrExists)
			}
			claims = append(claims, claim{r.Serial, r.DeviceID})
		}
		if prev != nil && prev.Serial != "" && prev.Serial != r.Serial {
			freed = append(freed, prev.Serial)
		}
		v, err := encode(r)
		if err != nil {
			return nil, fmt.Errorf("encoding pre-registration %s: %w", r.DeviceID, err)
		}
		l.put(s.k.prereg(r.DeviceID), v)
	}
	for _, serial := range freed {
		l.del(s.k.serial(serial))
	}
	sort.Slice(claims, func(i, j int) bool { return claims[i].serial < claims[j].serial })
	for i, c := range claims {
		if i > 0 && claims[i-1].serial == c.serial && claims[i-1].id != c.id {
			return nil, fmt.Errorf("serial %s is claimed by devices %s and %s: %w", c.serial, claims[i-1].id, c.id, store.ErrExists)
		}
		l.put(s.k.serial(c.serial), c.id)
	}
	return l.ops, nil
}

// MergePreregistrations implements store.Store: plan runs with the bulk
// lock held, its writes are all or nothing (bulk.go). Each PreregReader
// call not answered from its cache is one read from etcd.
func (s *Store) MergePreregistrations(ctx context.Context, plan func(store.PreregReader) (*store.PreregPlan, error)) error {
	return s.withBulk(ctx, func(b *bulk, rd *preregReader) error {
		p, err := plan(rd)
		if err != nil {
			return err
		}
		ops, err := s.preregPlanOps(rd, p)
		if err != nil {
			return err
		}
		var audit []*store.AuditRecord
		if p != nil {
			audit = p.Audit
		}
		return b.write(ctx, ops, nil, audit, nil)
	})
}

// CreateImport implements store.Store. It counts the open imports with a
// guarded range read (an import deleted meanwhile only lowers the count).
func (s *Store) CreateImport(ctx context.Context, b *store.ImportBatch, max, perOperator int) error {
	v, err := encode(b)
	if err != nil {
		return err
	}
	return s.update(ctx, func(t *txn) error {
		var open store.OpenImports
		if err := t.scan(s.k.importBatches(), end(s.k.importBatches()), false, func(kv *mvccpb.KeyValue) (bool, error) {
			ob, err := decode[store.ImportBatch](kv)
			if err != nil {
				return false, err
			}
			open.Add(b, ob)
			return true, nil
		}); err != nil {
			return err
		}
		if err := open.Check(max, perOperator); err != nil {
			return err
		}
		kv, err := t.getOne(s.k.importBatch(b.ID))
		if err != nil {
			return err
		}
		if kv != nil {
			return fmt.Errorf("import %s: %w", b.ID, store.ErrExists)
		}
		t.put(s.k.importBatch(b.ID), v)
		return nil
	})
}

// Import implements store.Store.
func (s *Store) Import(ctx context.Context, id string) (*store.ImportBatch, error) {
	return getJSON[store.ImportBatch](ctx, s, s.k.importBatch(id))
}

// ListImports implements store.Store: the import records are read at one
// revision, so the list is one snapshot.
func (s *Store) ListImports(ctx context.Context, now time.Time, limit int) ([]*store.ImportBatch, error) {
	var open []*store.ImportBatch
	var rev int64
	p := s.k.importBatches()
	if err := s.pages(ctx, p, end(p), false, &rev, func(kv *mvccpb.KeyValue) (bool, error) {
		b, err := decode[store.ImportBatch](kv)
		if err != nil {
			return false, err
		}
		if now.Before(b.ExpiresAt) {
			open = append(open, b)
		}
		return true, nil
	}); err != nil {
		return nil, err
	}
	return store.OldestImports(open, limit), nil
}

// readBatch reads a staged import with the bulk lock held.
func (s *Store) readBatch(ctx context.Context, id string) (*store.ImportBatch, *mvccpb.KeyValue, error) {
	kvs, err := s.getMany(ctx, []string{s.k.importBatch(id)}, 0)
	if err != nil {
		return nil, nil, err
	}
	if kvs[0] == nil {
		return nil, nil, store.ErrNotFound
	}
	b, err := decode[store.ImportBatch](kvs[0])
	return b, kvs[0], err
}

func unchanged(kv *mvccpb.KeyValue) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)
}

// StageImport implements store.Store: the rows and the updated import
// record are written all or nothing (bulk.go). The import record, with
// its row errors, must stay under MaxValueBytes: past that,
// ErrImportTooLarge.
func (s *Store) StageImport(ctx context.Context, id string, now time.Time, rows []*store.StagedRow, rejected []store.RowError, maxRows int) (*store.ImportBatch, error) {
	vals := make([]string, len(rows))
	for i, r := range rows {
		v, err := encode(r)
		if err != nil {
			return nil, err
		}
		vals[i] = v
	}
	var out *store.ImportBatch
	err := s.withBulk(ctx, func(bk *bulk, rd *preregReader) error {
		out = nil
		b, kv, err := s.readBatch(ctx, id)
		if err != nil {
			return err
		}
		if !now.Before(b.ExpiresAt) {
			return store.ErrImportExpired
		}
		if b.Staged+len(b.Rejected)+len(rows)+len(rejected) > maxRows {
			return fmt.Errorf("%w: more than %d rows", store.ErrImportTooLarge, maxRows)
		}
		keys := make([]string, len(rows))
		for i, r := range rows {
			keys[i] = s.k.importRow(id, r.Line)
		}
		if err := rd.prefetch(keys); err != nil {
			return err
		}
		var l opList
		for i, r := range rows {
			if kv, _ := rd.get(keys[i]); kv != nil {
				return fmt.Errorf("line %d: %w", r.Line, store.ErrExists)
			}
			if _, dup := l.at[keys[i]]; dup {
				return fmt.Errorf("line %d: %w", r.Line, store.ErrExists)
			}
			l.put(keys[i], vals[i])
		}
		b.Staged += len(rows)
		b.Rejected = append(b.Rejected, rejected...)
		v, err := encode(b)
		if err != nil {
			return err
		}
		if len(v) > MaxValueBytes {
			return fmt.Errorf("%w: the import's record would take %d bytes (at most %d in etcd): too many rejected rows", store.ErrImportTooLarge, len(v), MaxValueBytes)
		}
		if err := bk.write(ctx, l.ops, []bulkOp{{Key: string(kv.Key), Val: v}}, nil, []clientv3.Cmp{unchanged(kv)}); err != nil {
			return err
		}
		out = b
		return nil
	})
	return out, err
}

// CommitImport implements store.Store: plan runs with the bulk lock held
// over the staged rows (read page by page, in line order) and the
// pre-registrations they name (prefetched in batches); its writes,
// audit records and the deletion of the import are all or nothing
// (bulk.go).
func (s *Store) CommitImport(ctx context.Context, id string, now time.Time, plan func(*store.ImportBatch, []*store.StagedRow, store.PreregReader) (*store.PreregPlan, error)) error {
	return s.withBulk(ctx, func(bk *bulk, rd *preregReader) error {
		b, kv, err := s.readBatch(ctx, id)
		if err != nil {
			return err
		}
		if !now.Before(b.ExpiresAt) {
			return store.ErrImportExpired
		}
		rows := make([]*store.StagedRow, 0, b.Staged)
		p := s.k.importRows(id)
		if err := scanJSON(ctx, s, p, end(p), func(r *store.StagedRow) bool {
			rows = append(rows, r)
			return true
		}); err != nil {
			return err
		}
		if err := rd.Prefetch(rows); err != nil {
			return err
		}
		pl, err := plan(b, rows, rd)
		if err != nil {
			return err
		}
		ops, err := s.preregPlanOps(rd, pl)
		if err != nil {
			return err
		}
		var audit []*store.AuditRecord
		if pl != nil {
			audit = pl.Audit
		}
		final := []bulkOp{{Key: s.k.importBatch(id), Del: true}, {Key: p, Del: true, End: end(p)}}
		return bk.write(ctx, ops, final, audit, []clientv3.Cmp{unchanged(kv)})
	})
}

// DeleteImport implements store.Store.
func (s *Store) DeleteImport(ctx context.Context, id string) error {
	return s.withBulk(ctx, func(bk *bulk, _ *preregReader) error {
		if _, _, err := s.readBatch(ctx, id); err != nil {
			return err
		}
		p := s.k.importRows(id)
		return bk.fenced(ctx, clientv3.OpDelete(s.k.importBatch(id)), clientv3.OpDelete(p, clientv3.WithRange(end(p))))
	})
}

// PurgeExpiredImports implements store.Store.
func (s *Store) PurgeExpiredImports(ctx context.Context, now time.Time) (int, error) {
	n := 0
	err := s.withBulk(ctx, func(bk *bulk, _ *preregReader) error {
		n = 0
		var expired []string
		if err := s.scan(ctx, s.k.importBatches(), end(s.k.importBatches()), func(kv *mvccpb.KeyValue) (bool, error) {
			b, err := decode[store.ImportBatch](kv)
			if err != nil || !now.Before(b.ExpiresAt) {
				expired = append(expired, string(kv.Key[len(s.k.importBatches()):]))
			}
			return true, nil
		}); err != nil {
			return err
		}
		for _, id := range expired {
			p := s.k.importRows(id)
			if err := bk.fenced(ctx, clientv3.OpDelete(s.k.importBatch(id)), clientv3.OpDelete(p, clientv3.WithRange(end(p)))); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
