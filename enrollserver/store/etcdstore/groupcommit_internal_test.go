package etcdstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// TestQueuedCommitHonoursContext: an audited commit still waiting in the
// group-commit queue (its sender busy with an earlier batch) returns as
// soon as its caller's context ends, and leaves the queue, so nothing of it
// is ever sent.
func TestQueuedCommitHonoursContext(t *testing.T) {
	s := &Store{}
	s.gcRunning = true // a sender is busy: nothing takes from the queue
	ctx, cancel := context.WithCancel(context.Background())
	tx := &txn{s: s, ctx: ctx, writes: map[string]write{"k": {val: "v"}}, order: []string{"k"},
		audit: []*store.AuditRecord{{Action: "test"}}}
	errc := make(chan error, 1)
	go func() {
		_, err := tx.commit()
		errc <- err
	}()
	queued := func() int {
		s.gcMu.Lock()
		defer s.gcMu.Unlock()
		return len(s.gcQueue)
	}
	for deadline := time.Now().Add(5 * time.Second); queued() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the commit never reached the queue")
		}
	}
	select {
	case err := <-errc:
		t.Fatalf("commit returned %v while queued and its context live", err)
	case <-time.After(20 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("commit after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("commit still blocked 5 s after its context was cancelled")
	}
	if n := queued(); n != 0 {
		t.Fatalf("%d commits left in the queue, want 0", n)
	}
}
