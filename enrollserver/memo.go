package enrollserver

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"sync"
)

// memo is a bounded map from a SHA-256 key to a result that verified,
// least recently used out first. The server uses it to avoid verifying the
// same evidence twice (replayCache, verifications). Each use must make the
// key cover every input its verification reads, and add only results that
// verified; the doc comment where the key is made says why that holds.
// A nil memo remembers nothing.
type memo[V any] struct {
	mu  sync.Mutex
	max int
	ll  *list.List // of *memoEntry[V], most recent first
	m   map[[sha256.Size]byte]*list.Element
}

type memoEntry[V any] struct {
	key [sha256.Size]byte
	v   V
}

// newMemo returns a memo of at most max entries, or nil (remember nothing)
// if max is zero or negative.
func newMemo[V any](max int) *memo[V] {
	if max <= 0 {
		return nil
	}
	return &memo[V]{max: max, ll: list.New(), m: make(map[[sha256.Size]byte]*list.Element)}
}

// get returns the value under key, marking it most recently used.
func (c *memo[V]) get(key [sha256.Size]byte) (v V, ok bool) {
	if c == nil {
		return v, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok {
		return v, false
	}
	c.ll.MoveToFront(e)
	return e.Value.(*memoEntry[V]).v, true
}

// add puts v under key, replacing what was there, and drops the least
// recently used entries beyond max.
func (c *memo[V]) add(key [sha256.Size]byte, v V) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		e.Value.(*memoEntry[V]).v = v
		c.ll.MoveToFront(e)
		return
	}
	c.m[key] = c.ll.PushFront(&memoEntry[V]{key: key, v: v})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.m, old.Value.(*memoEntry[V]).key)
	}
}

// memoKey builds a memo key: SHA-256 of a domain string that names and
// versions the encoding, then the parts, every one length-prefixed so that
// no two different inputs encode alike.
type memoKey struct {
	h hash.Hash
	n [8]byte
}

func newMemoKey(domain string) *memoKey {
	k := &memoKey{h: sha256.New()}
	k.h.Write([]byte(domain))
	k.h.Write([]byte{0})
	return k
}

func (k *memoKey) int(v int) {
	binary.BigEndian.PutUint64(k.n[:], uint64(v))
	k.h.Write(k.n[:])
}

func (k *memoKey) bytes(b []byte) {
	k.int(len(b))
	k.h.Write(b)
}

func (k *memoKey) sum() (key [sha256.Size]byte) {
	k.h.Sum(key[:0])
	return key
}
