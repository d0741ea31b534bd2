package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// txn is one attempt of an optimistic transaction: reads go to etcd and
// are remembered with the ModRevision they saw; writes are buffered; the
// commit carries a compare per read, so it applies only if nothing read
// changed since (serializable: the commit is the transaction's point in
// time). A failed compare re-runs the whole attempt (update).
//
// Range reads are guarded by one compare over the range (no key in it
// modified or created after the read). A key deleted from a range read
// is not noticed: the methods that read ranges inside a transaction only
// read ranges whose keys are never deleted, or where a deletion cannot
// break what they check (see each use).
type txn struct {
	s      *Store
	ctx    context.Context
	reads  map[string]int64 // key → ModRevision seen (0: absent)
	ranges []readRange
	writes map[string]write
	order  []string // write keys in the order written
	undo   []undo   // previous state of each write, for rollback
	rkeys  []string // keys of reads, in the order read
	audit  []*store.AuditRecord
	extra  []clientv3.Cmp
}

type readRange struct {
	start, end string
	rev        int64 // revision of the read
}

type undo struct {
	key     string
	prev    write
	existed bool
}

type write struct {
	del   bool
	end   string // with del: delete the range [key, end)
	val   string
	lease clientv3.LeaseID
}

// errRetry makes update re-run the attempt (the reads must be redone).
var errRetry = errors.New("etcdstore: retry transaction")

// update runs fn in optimistic transactions until one commits, fn fails,
// or MaxTxnAttempts attempts conflicted. fn may run more than once: it
// must only read through t and keep results in variables it resets.
func (s *Store) update(ctx context.Context, fn func(t *txn) error) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		if attempt == MaxTxnAttempts {
			return fmt.Errorf("%d attempts: %w", attempt, ErrConflict)
		}
		if attempt > 0 {
			// Jitter spreads writers that keep colliding on one key.
			d := min(time.Duration(attempt)*conflictBackoff, maxConflictBackoff)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(rand.N(d) + d/4):
			}
		}
		t := &txn{s: s, ctx: ctx, reads: map[string]int64{}, writes: map[string]write{}}
		err := fn(t)
		if errors.Is(err, errRetry) {
			continue
		}
		if err != nil {
			return err
		}
		ok, err := t.commit()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
}

// get reads keys (in one request), honouring this attempt's own writes;
// absent keys are nil.
func (t *txn) get(keys ...string) ([]*mvccpb.KeyValue, error) {
	out := make([]*mvccpb.KeyValue, len(keys))
	var fetch []string
	var at []int
	for i, k := range keys {
		if w, ok := t.writes[k]; ok {
			if !w.del {
				out[i] = &mvccpb.KeyValue{Key: []byte(k), Value: []byte(w.val), Lease: int64(w.lease)}
			}
			continue
		}
		fetch = append(fetch, k)
		at = append(at, i)
	}
	if len(fetch) == 0 {
		return out, nil
	}
	if err := t.s.begin(t.ctx); err != nil {
		return nil, err
	}
	kvs, err := t.s.getMany(t.ctx, fetch, 0)
	if err != nil {
		return nil, err
	}
	for j, kv := range kvs {
		k := fetch[j]
		var rev int64
		if kv != nil {
			rev = kv.ModRevision
		}
		if seen, ok := t.reads[k]; ok && seen != rev {
			return nil, errRetry // changed between two reads of this attempt
		}
		if _, ok := t.reads[k]; !ok {
			t.rkeys = append(t.rkeys, k)
		}
		t.reads[k] = rev
		out[at[j]] = kv
	}
	return out, nil
}

// getOne is get of one key.
func (t *txn) getOne(key string) (*mvccpb.KeyValue, error) {
	kvs, err := t.get(key)
	if err != nil {
		return nil, err
	}
	return kvs[0], nil
}

// getJSON reads key into a new T, nil if absent.
func txnGet[T any](t *txn, key string) (*T, error) {
	kv, err := t.getOne(key)
	if err != nil || kv == nil {
		return nil, err
	}
	return decode[T](kv)
}

// scan reads the keys in [start, end) page by page (guarded by one range
// compare at the first page's revision: any later change to a key in the
// range fails the commit). Writes of this attempt are not seen.
func (t *txn) scan(start, end string, keysOnly bool, fn func(kv *mvccpb.KeyValue) (bool, error)) error {
	r := readRange{start: start, end: end}
	err := t.s.pages(t.ctx, start, end, keysOnly, &r.rev, fn)
	if r.rev != 0 {
		t.ranges = append(t.ranges, r)
	}
	return err
}

// count counts the keys in [start, end) (a count-only read), guarded as
// scan.
func (t *txn) count(start, end string) (int64, error) {
	if err := t.s.begin(t.ctx); err != nil {
		return 0, err
	}
	rctx, cancel := t.s.reqCtx(t.ctx)
	defer cancel()
	resp, err := t.s.cli.Get(rctx, start, clientv3.WithRange(end), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("counting %s: %w", t.s.k.rel(start), err)
	}
	t.ranges = append(t.ranges, readRange{start: start, end: end, rev: resp.Header.Revision})
	return resp.Count, nil
}

func (t *txn) put(key, val string) { t.putLease(key, val, clientv3.NoLease) }

func (t *txn) putLease(key, val string, lease clientv3.LeaseID) {
	t.set(key, write{val: val, lease: lease})
}

func (t *txn) set(key string, w write) {
	prev, ok := t.writes[key]
	t.undo = append(t.undo, undo{key, prev, ok})
	if !ok {
		t.order = append(t.order, key)
	}
	t.writes[key] = w
}

func (t *txn) putJSON(key string, v any) error {
	val, err := encode(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", t.s.k.rel(key), err)
	}
	t.put(key, val)
	return nil
}

func (t *txn) del(key string) { t.set(key, write{del: true}) }

// guard adds a range compare: no key in [start, end) changed after rev.
// It guards reads made at rev outside get and scan.
func (t *txn) guard(start, end string, rev int64) {
	t.ranges = append(t.ranges, readRange{start: start, end: end, rev: rev})
}

// savepoint is a state of the attempt to roll back to.
type savepoint struct{ undo, order, audit, rkeys, ranges int }

func (t *txn) mark() savepoint {
	return savepoint{len(t.undo), len(t.order), len(t.audit), len(t.rkeys), len(t.ranges)}
}

// rollback forgets every read and write made after sp.
func (t *txn) rollback(sp savepoint) {
	for i := len(t.undo) - 1; i >= sp.undo; i-- {
		u := t.undo[i]
		if u.existed {
			t.writes[u.key] = u.prev
		} else {
			delete(t.writes, u.key)
		}
	}
	t.undo, t.order, t.audit = t.undo[:sp.undo], t.order[:sp.order], t.audit[:sp.audit]
	for _, k := range t.rkeys[sp.rkeys:] {
		delete(t.reads, k)
	}
	t.rkeys, t.ranges = t.rkeys[:sp.rkeys], t.ranges[:sp.ranges]
}

// appendAudit appends records in commit order; the commit assigns Seq.
func (t *txn) appendAudit(recs ...*store.AuditRecord) { t.audit = append(t.audit, recs...) }

// ops is the number of operations the commit will carry, as etcd counts
// them (the compares at the outer level plus the nested commit's writes).
func (t *txn) ops() int {
	n := len(t.writes)
	if len(t.audit) > 0 {
		n += len(t.audit) + 1
	}
	return max(len(t.reads)+len(t.ranges)+len(t.extra), 1) + n
}

// commit sends the buffered writes, guarded by the reads. It reports
// false if a read changed (the attempt must be re-run). Writes that
// append audit records go through the group commit (groupcommit.go).
func (t *txn) commit() (bool, error) {
	if len(t.writes) == 0 && len(t.audit) == 0 {
		return true, nil // nothing to write: the reads were the answer
	}
	if n := t.ops(); n > MaxTxnOps {
		return false, fmt.Errorf("%d operations, at most %d: %w", n, MaxTxnOps, ErrTooManyOps)
	}
	cmps := make([]clientv3.Cmp, 0, len(t.reads)+len(t.ranges)+len(t.extra))
	for k, rev := range t.reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
	}
	for _, r := range t.ranges {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(r.start).WithRange(r.end), "<", r.rev+1))
	}
	cmps = append(cmps, t.extra...)
	ops := make([]clientv3.Op, 0, len(t.order)+len(t.audit)+1)
	size := 0
	for _, k := range t.order {
		w := t.writes[k]
		size += len(k) + len(w.val)
		switch {
		case w.del && w.end != "":
			ops = append(ops, clientv3.OpDelete(k, clientv3.WithRange(w.end)))
		case w.del:
			ops = append(ops, clientv3.OpDelete(k))
		case w.lease != clientv3.NoLease:
			ops = append(ops, clientv3.OpPut(k, w.val, clientv3.WithLease(w.lease)))
		default:
			ops = append(ops, clientv3.OpPut(k, w.val))
		}
	}
	for _, r := range t.audit {
		size += 512 + len(r.Before) + len(r.After) + len(r.Message) // an estimate: the records are encoded per try
	}
	if size > MaxTxnBytes {
		return false, fmt.Errorf("%d bytes, at most %d: %w", size, MaxTxnBytes, ErrTooManyOps)
	}
	if len(t.audit) == 0 {
		rctx, cancel := t.s.reqCtx(t.ctx)
		defer cancel()
		resp, err := t.s.cli.Txn(rctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, fmt.Errorf("committing: %w", err)
		}
		return resp.Succeeded, nil
	}
	p := &pendingCommit{t: t, cmps: cmps, ops: ops, size: size, done: make(chan commitResult, 1)}
	if len(t.extra) > 0 {
		// A bulk write's fenced commit is sent alone.
		t.s.sendBatch(t.ctx, []*pendingCommit{p})
		r := <-p.done
		return r.ok, r.err
	}
	t.s.submit(p)
	select {
	case r := <-p.done:
		return r.ok, r.err
	case <-t.ctx.Done():
		if t.s.unqueue(p) {
			return false, t.ctx.Err() // never sent: nothing written
		}
		// Already sent: its outcome is settled within the request
		// timeout, and the caller must learn it.
		r := <-p.done
		return r.ok, r.err
	}
}

func (s *Store) seqHint() counterHint {
	s.seqMu.Lock()
	defer s.seqMu.Unlock()
	return s.seq
}

// setSeqHint records a counter seen; an older sighting never replaces a
// newer one.
func (s *Store) setSeqHint(h counterHint) {
	s.seqMu.Lock()
	defer s.seqMu.Unlock()
	if h.modRev >= s.seq.modRev {
		s.seq = h
	}
}
