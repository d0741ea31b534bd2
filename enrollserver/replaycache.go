package enrollserver

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"sync"

	"github.com/edgeenroll/edgeenroll/firmware"
)

// replayCache remembers the verified view (firmware.Measurements) of event
// logs replayed against verified PCR values, least recently used out
// first. Parsing and replaying a firmware log of a few hundred events
// costs about 0.4 ms, a fifth of an enrollment's server time, and a device
// that renews without rebooting sends the same log and quotes the same PCR
// values every time (as do identical devices booting identical firmware).
//
// It is sound because Log.Replay is a pure function of exactly three
// inputs, the log's bytes, the quoted PCR values and the required PCRs,
// and the key is a SHA-256 over all three (so a hit is the result Replay
// would return). Only the replay is remembered: the policy (approved
// references, secure boot) is judged at every finish, against the
// references of the moment. Refusals are not remembered.
type replayCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List // of *replayEntry, most recent first
	m   map[[sha256.Size]byte]*list.Element
}

type replayEntry struct {
	key [sha256.Size]byte
	m   *firmware.Measurements
}

// newReplayCache returns a cache of max entries, or nil (no caching) if max
// is negative or zero.
func newReplayCache(max int) *replayCache {
	if max <= 0 {
		return nil
	}
	return &replayCache{max: max, ll: list.New(), m: make(map[[sha256.Size]byte]*list.Element)}
}

// replayKeyDomain versions the key's encoding.
const replayKeyDomain = "edgeenroll replay cache v1\x00"

// replayKey is SHA-256 of the domain, the log (length-prefixed), each
// quoted PCR in index order (index, value) and the required PCRs in order,
// each part length-prefixed so no two inputs encode alike.
func replayKey(eventLog []byte, quoted map[int][]byte, required []int) [sha256.Size]byte {
	h := sha256.New()
	var n [8]byte
	u64 := func(v int) {
		binary.BigEndian.PutUint64(n[:], uint64(v))
		h.Write(n[:])
	}
	h.Write([]byte(replayKeyDomain))
	u64(len(eventLog))
	h.Write(eventLog)
	idx := make([]int, 0, len(quoted))
	for i := range quoted {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	u64(len(idx))
	for _, i := range idx {
		u64(i)
		u64(len(quoted[i]))
		h.Write(quoted[i])
	}
	req := slices.Sorted(slices.Values(required))
	u64(len(req))
	for _, i := range req {
		u64(i)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

// replay returns the verified view of eventLog against quoted: from the
// cache, or from firmware.ParseMeasurements and Log.Replay (remembered on
// success). hit reports a cache hit. A nil cache always replays.
func (c *replayCache) replay(eventLog []byte, quoted map[int][]byte, required []int) (m *firmware.Measurements, hit bool, err error) {
	var key [sha256.Size]byte
	if c != nil {
		key = replayKey(eventLog, quoted, required)
		c.mu.Lock()
		if e, ok := c.m[key]; ok {
			c.ll.MoveToFront(e)
			m := e.Value.(*replayEntry).m
			c.mu.Unlock()
			return m, true, nil
		}
		c.mu.Unlock()
	}
	lg, err := firmware.ParseMeasurements(eventLog)
	if err != nil {
		return nil, false, err
	}
	m, err = lg.Replay(quoted, required)
	if err != nil || c == nil {
		return m, false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok { // a concurrent finish got there first
		c.ll.MoveToFront(e)
		return m, false, nil
	}
	c.m[key] = c.ll.PushFront(&replayEntry{key: key, m: m})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*replayEntry).key)
	}
	return m, false, nil
}
