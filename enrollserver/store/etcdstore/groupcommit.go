package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Group commit of audited writes.
//
// The audit counter is a hot key: every audited write bumps it, so two
// audited transactions committed at once conflict on it, and only one
// per raft round trip can win. Two measures keep concurrent enrollments
// from serialising on it:
//
//  1. The writes go into a nested transaction guarded by the counter
//     alone, inside the outer one guarded by the reads:
//
//     If(reads unchanged) Then( Txn( If(counter unchanged) Then(writes, audit, counter+n) Else(Get counter) ) )
//
//     Nothing is written unless both hold. If only the counter moved,
//     the answer carries its new value and the commit is re-sent with the
//     audit records renumbered, without re-running the caller's
//     function (its inputs did not change).
//
//  2. Audited commits of one Store are queued, and one goroutine sends
//     the queue as one transaction: the reads of every member of the
//     batch guard the union of their writes and their audit records,
//     numbered in queue order. Only transactions that touch disjoint keys
//     share a batch (no member writes what another reads or writes), so
//     the batch is equivalent to committing its members one after the
//     other. If a member's reads changed, the batch's Else branch tells
//     which (a compare-only transaction per member): those members
//     conflict (their callers re-run), the others are re-queued.
//
// A batch is sent with its own request timeout, not a caller's context:
// a caller that gives up once its commit is sent still finds its write
// committed or not, as with any etcd request in flight. A caller whose
// context ends while its commit is still queued takes it out of the
// queue and returns the context's error, nothing written.

// pendingCommit is one transaction waiting in the queue.
type pendingCommit struct {
	t    *txn
	cmps []clientv3.Cmp
	ops  []clientv3.Op
	size int // estimated encoded bytes (txn.commit)
	done chan commitResult
}

type commitResult struct {
	ok  bool
	err error
}

// submit queues p and makes sure a sender runs.
func (s *Store) submit(p *pendingCommit) {
	s.gcMu.Lock()
	s.gcQueue = append(s.gcQueue, p)
	if !s.gcRunning {
		s.gcRunning = true
		go s.runCommits()
	}
	s.gcMu.Unlock()
}

// runCommits sends batches until the queue is empty.
func (s *Store) runCommits() {
	for {
		s.gcMu.Lock()
		batch := s.takeBatch()
		if len(batch) == 0 {
			s.gcRunning = false
			s.gcMu.Unlock()
			return
		}
		s.gcMu.Unlock()
		s.sendBatch(context.Background(), batch)
	}
}

// takeBatch removes from the queue the first transaction and every later
// one compatible with the batch so far, within MaxTxnOps.
func (s *Store) takeBatch() []*pendingCommit {
	var batch, rest []*pendingCommit
	writes := map[string]bool{}
	reads := map[string]bool{}
	var ranges []readRange
	ncmp, nops, maxCmp := 0, 1, 0 // nops: the counter
	size := 0                     // a batch stays under MaxTxnBytes, as each member does
	for _, p := range s.gcQueue {
		t := p.t
		// etcd counts a transaction's operations per level: the outer
		// level has the compares (and, batched, one diagnostic
		// transaction per member in Else); the nested ones get what is
		// left of MaxTxnOps.
		n, c, o, mc := len(batch)+1, ncmp+len(p.cmps), nops+len(p.ops)+len(t.audit), max(maxCmp, len(p.cmps))
		outer := max(c, 1)
		if n > 1 {
			outer = max(outer, n)
		}
		fits := n <= maxBatch && outer+o <= MaxTxnOps && (n == 1 || outer+mc <= MaxTxnOps) && (n == 1 || size+p.size <= MaxTxnBytes)
		if fits && len(batch) > 0 {
			for k := range t.writes {
				if writes[k] || reads[k] || inRanges(ranges, k) {
					fits = false
					break
				}
			}
			for k := range t.reads {
				if !fits || writes[k] {
					fits = false
					break
				}
			}
			for _, r := range t.ranges {
				for k := range writes {
					if !fits || (k >= r.start && k < r.end) {
						fits = false
						break
					}
				}
			}
		}
		if !fits {
			rest = append(rest, p)
			continue
		}
		batch = append(batch, p)
		for k := range t.writes {
			writes[k] = true
		}
		for k := range t.reads {
			reads[k] = true
		}
		ranges = append(ranges, t.ranges...)
		ncmp += len(p.cmps)
		nops += len(p.ops) + len(t.audit)
		maxCmp = max(maxCmp, len(p.cmps))
		size += p.size
	}
	s.gcQueue = rest
	return batch
}

func inRanges(ranges []readRange, k string) bool {
	for _, r := range ranges {
		if k >= r.start && k < r.end {
			return true
		}
	}
	return false
}

// unqueue takes p out of the queue if no sender has taken it yet, and
// reports whether it did.
func (s *Store) unqueue(p *pendingCommit) bool {
	s.gcMu.Lock()
	defer s.gcMu.Unlock()
	if i := slices.Index(s.gcQueue, p); i >= 0 {
		s.gcQueue = slices.Delete(s.gcQueue, i, i+1)
		return true
	}
	return false
}

// requeue puts transactions back at the head of the queue.
func (s *Store) requeue(ps []*pendingCommit) {
	if len(ps) == 0 {
		return
	}
	s.gcMu.Lock()
	s.gcQueue = append(append([]*pendingCommit(nil), ps...), s.gcQueue...)
	if !s.gcRunning {
		s.gcRunning = true
		go s.runCommits()
	}
	s.gcMu.Unlock()
}

// sendBatch commits batch (see above) and answers each member on its
// done channel, or re-queues it.
func (s *Store) sendBatch(ctx context.Context, batch []*pendingCommit) {
	finish := func(ps []*pendingCommit, r commitResult) {
		for _, p := range ps {
			p.done <- r
		}
	}
	counterKey := s.k.meta("audit_seq")
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	diag := make([]clientv3.Op, len(batch))
	for i, p := range batch {
		cmps = append(cmps, p.cmps...)
		ops = append(ops, p.ops...)
		diag[i] = clientv3.OpTxn(p.cmps, nil, nil)
	}
	for range maxSeqRetries {
		hint := s.seqHint()
		all := append([]clientv3.Op(nil), ops...)
		next := hint.value
		for _, p := range batch {
			for _, r := range p.t.audit {
				next++
				r.Seq = next
				v, err := encode(r)
				if err != nil {
					finish(batch, commitResult{err: fmt.Errorf("encoding audit record: %w", err)})
					return
				}
				all = append(all, clientv3.OpPut(s.k.audit(r.Seq), v))
			}
		}
		all = append(all, clientv3.OpPut(counterKey, strconv.FormatUint(next, 10)))
		inner := clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(counterKey), "=", hint.modRev)},
			all, []clientv3.Op{clientv3.OpGet(counterKey)})
		rctx, cancel := s.reqCtx(ctx)
		var resp *clientv3.TxnResponse
		var err error
		if len(batch) == 1 {
			resp, err = s.cli.Txn(rctx).If(cmps...).Then(inner).Commit()
		} else {
			resp, err = s.cli.Txn(rctx).If(cmps...).Then(inner).Else(diag...).Commit()
		}
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) && len(batch) > 1 {
			// One member's lease is gone: nothing was written; send each
			// alone so only that one fails.
			for _, p := range batch {
				s.sendBatch(ctx, []*pendingCommit{p})
			}
			return
		}
		if err != nil {
			finish(batch, commitResult{err: fmt.Errorf("committing: %w", err)})
			return
		}
		if !resp.Succeeded {
			if len(batch) == 1 {
				finish(batch, commitResult{})
				return
			}
			var retry []*pendingCommit
			for i, r := range resp.Responses {
				if r.GetResponseTxn().Succeeded {
					retry = append(retry, batch[i])
				} else {
					finish(batch[i:i+1], commitResult{})
				}
			}
			s.requeue(retry)
			return
		}
		in := resp.Responses[0].GetResponseTxn()
		if in.Succeeded {
			s.setSeqHint(counterHint{value: next, modRev: resp.Header.Revision})
			finish(batch, commitResult{ok: true})
			return
		}
		var kv *mvccpb.KeyValue
		if kvs := in.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			kv = kvs[0]
		}
		v, err := parseCounter(kv)
		if err != nil {
			finish(batch, commitResult{err: err})
			return
		}
		h := counterHint{value: v}
		if kv != nil {
			h.modRev = kv.ModRevision
		}
		s.setSeqHint(h)
	}
	finish(batch, commitResult{err: fmt.Errorf("audit counter: %d attempts: %w", maxSeqRetries, ErrConflict)})
}
