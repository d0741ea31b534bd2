package enrollserver

import (
	"bytes"
	"sync"
	"testing"

	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

func TestReplayCache(t *testing.T) {
	logA, logB := elt.New(nil), elt.New(&elt.Options{FirmwareVersion: "other"})
	a, pa := logA.Bytes(), logA.PCRs()
	b, pb := logB.Bytes(), logB.PCRs()
	c := newReplayCache(2)

	m1, hit, err := c.replay(a, pa, nil)
	if err != nil || hit {
		t.Fatalf("first replay: hit %v, %v", hit, err)
	}
	m2, hit, err := c.replay(a, pa, nil)
	if err != nil || !hit || m2 != m1 {
		t.Fatalf("same log and PCRs: hit %v, same result %v, %v", hit, m2 == m1, err)
	}
	// Every input is part of the key.
	if _, hit, _ := c.replay(a, pa, []int{23}); hit {
		t.Error("other required PCRs hit")
	}
	extra := map[int][]byte{23: make([]byte, 32)}
	for k, v := range pa {
		extra[k] = v
	}
	if _, hit, _ := c.replay(a, extra, nil); hit {
		t.Error("another quoted PCR hit")
	}
	// A refused replay is not remembered, and refuses again.
	for range 2 {
		if _, hit, err := c.replay(a, pb, nil); err == nil || hit {
			t.Fatalf("log A against B's PCRs: hit %v, %v", hit, err)
		}
	}
	// Least recently used out: max 2.
	if _, _, err := c.replay(b, pb, nil); err != nil {
		t.Fatal(err)
	}
	if len(c.memo.m) != 2 || c.memo.ll.Len() != 2 {
		t.Errorf("cache holds %d (%d), want 2", len(c.memo.m), c.memo.ll.Len())
	}
	if _, hit, _ := c.replay(a, pa, nil); hit {
		t.Error("the oldest entry survived eviction")
	}
	// No cache: always replays.
	var none *replayCache
	if m, hit, err := none.replay(a, pa, nil); err != nil || hit || m.FirmwareDigest() != m1.FirmwareDigest() {
		t.Errorf("nil cache: %v %v", hit, err)
	}
	if newReplayCache(-1) != nil || newReplayCache(0) != nil {
		t.Error("a cache of no entries was made")
	}
	// Keys are unambiguous: moving bytes between parts changes them.
	if replayKey(a, pa, nil) == replayKey(append(bytes.Clone(a), 0), pa, nil) {
		t.Error("key ignores the log's length")
	}
}

func TestReplayCacheConcurrent(t *testing.T) {
	l := elt.New(nil)
	log, pcrs := l.Bytes(), l.PCRs()
	c := newReplayCache(1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				m, _, err := c.replay(log, pcrs, nil)
				if err != nil || m.FirmwareDigest() == "" || !m.SecureBootEnabled() {
					t.Errorf("replay: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
