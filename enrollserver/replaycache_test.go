package enrollserver

import (
	"bytes"
	"sync"
	"testing"

	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

func TestReplayCache(t *testing.T) {
	logA, logB := elt.New(nil), elt.New(&elt.Options{FirmwareVersion: "other"})
	a, pa := logA.Bytes(), logA.PCRs()
	b, pb := logB.Bytes(), logB.PCRs()
	c := newMemo[*firmware.Measurements](2)

	m1, hit, err := replay(c, a, pa, nil)
	if err != nil || hit {
		t.Fatalf("first replay: hit %v, %v", hit, err)
	}
	m2, hit, err := replay(c, a, pa, nil)
	if err != nil || !hit || m2 != m1 {
		t.Fatalf("same log and PCRs: hit %v, same result %v, %v", hit, m2 == m1, err)
	}
	// Every input is part of the key.
	if _, hit, _ := replay(c, a, pa, []int{23}); hit {
		t.Error("other required PCRs hit")
	}
	extra := map[int][]byte{23: make([]byte, 32)}
	for k, v := range pa {
		extra[k] = v
	}
	if _, hit, _ := replay(c, a, extra, nil); hit {
		t.Error("another quoted PCR hit")
	}
	// A refused replay is not remembered, and refuses again.
	for range 2 {
		if _, hit, err := replay(c, a, pb, nil); err == nil || hit {
			t.Fatalf("log A against B's PCRs: hit %v, %v", hit, err)
		}
	}
	// Least recently used out: max 2.
	if _, _, err := replay(c, b, pb, nil); err != nil {
		t.Fatal(err)
	}
	if len(c.m) != 2 || c.ll.Len() != 2 {
		t.Errorf("cache holds %d (%d), want 2", len(c.m), c.ll.Len())
	}
	if _, hit, _ := replay(c, a, pa, nil); hit {
		t.Error("the oldest entry survived eviction")
	}
	// No cache: always replays.
	var none *replayCache
	if m, hit, err := replay(none, a, pa, nil); err != nil || hit || m.FirmwareDigest() != m1.FirmwareDigest() {
		t.Errorf("nil cache: %v %v", hit, err)
	}
	if newMemo[*firmware.Measurements](-1) != nil || newMemo[*firmware.Measurements](0) != nil {
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
	c := newMemo[*firmware.Measurements](1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				m, _, err := replay(c, log, pcrs, nil)
				if err != nil || m.FirmwareDigest() == "" || !m.SecureBootEnabled() {
					t.Errorf("replay: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
