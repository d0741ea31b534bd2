package etcdstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Bulk writes: pre-registrations and staged imports.
//
// A factory import writes up to a million rows; etcd takes at most
// MaxTxnOps operations and MaxTxnBytes bytes per transaction. These
// writes therefore run under one lock (a concurrency.Mutex on a leased
// key, kept alive while held) and through a journal:
//
//  1. With the lock held, the plan is computed from current reads; every
//     writer of the keys it reads (pre-registrations, serials, staged
//     imports) holds the same lock, so they cannot change under it.
//  2. If the writes fit one transaction, they commit in one, as in bbolt.
//  3. Otherwise they are written as journal chunks (invisible to every
//     reader), then one transaction marks the journal committed and, in
//     the same commit, appends the audit records and makes the small
//     "final" writes (the staged import's record). That transaction is
//     the commit point: before it nothing is visible and the journal is
//     discarded; after it, the chunks are applied (rolled forward), each
//     chunk in a transaction, and the journal deleted.
//  4. A server that dies between 3's commit and the end of the roll
//     forward leaves a committed journal: the next holder of the lock
//     (or the next Open) rolls it forward before doing anything else;
//     an uncommitted one is deleted. Re-applying a chunk is idempotent.
//
// So a bulk write is all-or-nothing, but not isolated from readers while
// it is rolled forward: a reader (Preregistration, Preregistrations)
// may see some rows of a committed import before others, for the time the
// roll forward takes. Every transaction a lock holder sends is fenced by
// the lock key (Mutex.IsOwner), so a holder whose lease expired (a long
// pause) cannot write after another took over.

// errLostLock: the bulk lock's lease ended while held.
var errLostLock = errors.New("etcdstore: bulk lock lost (lease expired): nothing more was written")

// bulk is the held bulk lock.
type bulk struct {
	s    *Store
	sess *concurrency.Session
	mu   *concurrency.Mutex
}

// errBulkLockHeld: lockBulk with try found the lock held.
var errBulkLockHeld = errors.New("bulk-write lock held by another server")

// lockBulk takes the cluster-wide bulk-write lock, waiting at most
// Options.BulkLockWait (try: not at all, errBulkLockHeld), and finishes
// or discards journals a stopped server left.
func (s *Store) lockBulk(ctx context.Context, try bool) (*bulk, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	rctx, cancel := s.reqCtx(ctx)
	lease, err := s.cli.Grant(rctx, bulkLockTTL)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("granting the bulk lock lease: %w", err)
	}
	// The keepalive must outlive ctx's deadline but not the lock: it ends
	// with unlock.
	sess, err := concurrency.NewSession(s.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(bulkLockTTL),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, fmt.Errorf("keeping the bulk lock lease alive: %w", err)
	}
	mu := concurrency.NewMutex(sess, s.k.bulkLock())
	lctx, cancel := context.WithTimeout(ctx, s.opts.BulkLockWait)
	if try {
		err = mu.TryLock(lctx)
	} else {
		err = mu.Lock(lctx)
	}
	cancel()
	switch {
	case errors.Is(err, concurrency.ErrLocked):
		sess.Close()
		return nil, errBulkLockHeld
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
		sess.Close()
		return nil, fmt.Errorf("taking the bulk-write lock: another server's pre-registration or import held it for over %v (Options.BulkLockWait); retry when it is done: %w", s.opts.BulkLockWait, err)
	case err != nil:
		sess.Close()
		return nil, fmt.Errorf("taking the bulk-write lock: %w", err)
	}
	b := &bulk{s: s, sess: sess, mu: mu}
	if err := b.recover(ctx); err != nil {
		b.unlock()
		return nil, err
	}
	return b, nil
}

func (b *bulk) unlock() {
	ctx, cancel := context.WithTimeout(context.Background(), b.s.opts.RequestTimeout)
	defer cancel()
	b.mu.Unlock(ctx)
	b.sess.Close()
}

// recoverIfNeeded finishes a journal a dead server left (at Open).
func (s *Store) recoverIfNeeded(ctx context.Context) error {
	rctx, cancel := s.reqCtx(ctx)
	resp, err := s.cli.Get(rctx, s.k.journals(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("checking for unfinished bulk writes: %w", err)
	}
	if resp.Count == 0 {
		return nil
	}
	b, err := s.lockBulk(ctx, true) // recovers
	if errors.Is(err, errBulkLockHeld) {
		// A server is writing in bulk now (its own journal is counted);
		// it, or the next lock holder, finishes what a stopped one left.
		return nil
	} else if err != nil {
		return err
	}
	b.unlock()
	return nil
}

// recover rolls committed journals forward and discards the others.
func (b *bulk) recover(ctx context.Context) error {
	s := b.s
	var states []*mvccpb.KeyValue
	if err := s.scan(ctx, s.k.journals(), end(s.k.journals()), func(kv *mvccpb.KeyValue) (bool, error) {
		states = append(states, kv)
		return true, nil
	}); err != nil {
		return err
	}
	for _, kv := range states {
		jid := string(kv.Key[len(s.k.journals()):])
		if string(kv.Value) == journalCommitted {
			s.log.Warn("rolling forward a bulk write a stopped server committed", "journal", jid)
			if err := b.rollForward(ctx, jid); err != nil {
				return err
			}
			continue
		}
		s.log.Warn("discarding a bulk write a stopped server did not commit", "journal", jid)
		if err := b.discard(ctx, jid); err != nil {
			return err
		}
	}
	return nil
}

const (
	journalStaging   = "staging"
	journalCommitted = "committed"
)

// bulkOp is one journaled write.
type bulkOp struct {
	Key string `json:"k"`
	Val string `json:"v,omitempty"`
	Del bool   `json:"d,omitempty"`
	End string `json:"e,omitempty"` // with Del: a range
}

func (o bulkOp) op() clientv3.Op {
	switch {
	case o.Del && o.End != "":
		return clientv3.OpDelete(o.Key, clientv3.WithRange(o.End))
	case o.Del:
		return clientv3.OpDelete(o.Key)
	}
	return clientv3.OpPut(o.Key, o.Val)
}

func (o bulkOp) size() int { return len(o.Key) + len(o.Val) + len(o.End) + 8 }

// fenced sends ops in one transaction guarded by the lock.
func (b *bulk) fenced(ctx context.Context, ops ...clientv3.Op) error {
	rctx, cancel := b.s.reqCtx(ctx)
	defer cancel()
	resp, err := b.s.cli.Txn(rctx).If(b.mu.IsOwner()).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("bulk write: %w", err)
	}
	if !resp.Succeeded {
		return errLostLock
	}
	return nil
}

// write commits body and final (each key at most once across both) and
// appends audit, atomically as described above; cmps guard what the
// plan read that the lock does not cover. It returns errRetry if cmps
// failed.
func (b *bulk) write(ctx context.Context, body, final []bulkOp, audit []*store.AuditRecord, cmps []clientv3.Cmp) error {
	s := b.s
	if len(final)+len(audit)+4+len(cmps) > MaxTxnOps {
		return fmt.Errorf("%d audit records: %w", len(audit), ErrTooManyOps)
	}
	size := 0
	for _, o := range body {
		size += o.size()
	}
	for _, o := range final {
		size += o.size()
	}
	commit := func(ops []bulkOp) error {
		t := &txn{s: s, ctx: ctx, reads: map[string]int64{}, writes: map[string]write{}}
		t.extra = append([]clientv3.Cmp{b.mu.IsOwner()}, cmps...)
		for _, o := range ops {
			t.set(o.Key, write{del: o.Del, end: o.End, val: o.Val})
		}
		t.appendAudit(audit...)
		ok, err := t.commit()
		if err != nil {
			return err
		}
		if !ok {
			if !b.owner(ctx) {
				return errLostLock
			}
			return errRetry
		}
		return nil
	}
	if len(body)+len(final)+len(audit)+len(cmps)+2 <= MaxTxnOps && size <= MaxTxnBytes/2 {
		return commit(append(append([]bulkOp(nil), body...), final...))
	}

	// The journal: staged, chunked, committed by its state key.
	var id [8]byte
	rand.Read(id[:])
	jid := hex.EncodeToString(id[:])
	if err := b.fenced(ctx, clientv3.OpPut(s.k.journalState(jid), journalStaging)); err != nil {
		return err
	}
	var pending []clientv3.Op
	pendingSize, chunk := 0, 0
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		err := b.fenced(ctx, pending...)
		pending, pendingSize = pending[:0], 0
		return err
	}
	for i := 0; i < len(body); {
		j, sz := i, 0
		for j < len(body) && j-i < journalChunkOps && sz+body[j].size() <= MaxTxnBytes/4 {
			sz += body[j].size()
			j++
		}
		if j == i {
			return fmt.Errorf("bulk write of %s: %d bytes: %w", s.k.rel(body[i].Key), body[i].size(), ErrTooManyOps)
		}
		v, err := json.Marshal(body[i:j])
		if err != nil {
			return err
		}
		if pendingSize+len(v) > MaxTxnBytes/2 || len(pending) == MaxTxnOps-1 {
			if err := flush(); err != nil {
				return err
			}
		}
		pending = append(pending, clientv3.OpPut(s.k.journalChunk(jid, chunk), string(v)))
		pendingSize += len(v)
		chunk++
		i = j
		if err := s.begin(ctx); err != nil {
			b.discard(context.WithoutCancel(ctx), jid)
			return err
		}
	}
	if err := flush(); err != nil {
		return err
	}
	// The commit point.
	if err := commit(append(final, bulkOp{Key: s.k.journalState(jid), Val: journalCommitted})); err != nil {
		if errors.Is(err, errLostLock) {
			return err
		}
		// An error may hide a commit that applied (a timeout): look at
		// the journal's state before throwing its rows away. If it cannot
		// be read, the journal stays for the next lock holder's recovery,
		// which finishes or discards it by the same state.
		rctx, cancel := s.reqCtx(context.WithoutCancel(ctx))
		resp, serr := s.cli.Get(rctx, s.k.journalState(jid))
		cancel()
		switch {
		case serr != nil:
			return fmt.Errorf("%w (bulk write %s left for the next writer to finish or discard: %v)", err, jid, serr)
		case len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == journalCommitted:
			return b.rollForward(context.WithoutCancel(ctx), jid)
		}
		b.discard(context.WithoutCancel(ctx), jid)
		return err
	}
	// Committed: finish even if ctx ends (the lock holder's duty; a
	// crash here is finished by the next holder).
	return b.rollForward(context.WithoutCancel(ctx), jid)
}

func (b *bulk) owner(ctx context.Context) bool {
	rctx, cancel := b.s.reqCtx(ctx)
	defer cancel()
	resp, err := b.s.cli.Txn(rctx).If(b.mu.IsOwner()).Commit()
	return err == nil && resp.Succeeded
}

// rollForward applies a committed journal's chunks in order, then deletes
// the journal.
func (b *bulk) rollForward(ctx context.Context, jid string) error {
	s := b.s
	p := s.k.journalChunks(jid)
	err := s.scan(ctx, p, end(p), func(kv *mvccpb.KeyValue) (bool, error) {
		var ops []bulkOp
		if err := json.Unmarshal(kv.Value, &ops); err != nil {
			return false, fmt.Errorf("decoding journal chunk %s: %w", s.k.rel(string(kv.Key)), err)
		}
		tops := make([]clientv3.Op, len(ops))
		for i, o := range ops {
			tops[i] = o.op()
		}
		return true, b.fenced(ctx, tops...)
	})
	if err != nil {
		return fmt.Errorf("rolling forward bulk write %s (the next writer finishes it): %w", jid, err)
	}
	return b.discard(ctx, jid)
}

// discard deletes a journal.
func (b *bulk) discard(ctx context.Context, jid string) error {
	p := b.s.k.journalChunks(jid)
	return b.fenced(ctx, clientv3.OpDelete(p, clientv3.WithRange(end(p))), clientv3.OpDelete(b.s.k.journalState(jid)))
}
