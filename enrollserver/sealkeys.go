package enrollserver

import (
	"sync"
	"time"
)

// maxSealKeys bounds the sealing keys held in memory: one per live session.
// At the default 2-minute session TTL this is ample for 800 begins/s; past
// it the oldest keys go first and their sessions can still finish over
// HTTPS, or begin again.
const maxSealKeys = 100000

// sealKeys holds each live session's response-sealing key, derived from its
// activation secret at begin. They live in memory only, never in the store:
// a restarted server has none, and a device whose finish arrives then is
// told to begin again.
type sealKeys struct {
	mu    sync.Mutex
	keys  map[string]sealKey
	order []string // insertion order, for eviction
}

type sealKey struct {
	key     []byte
	expires time.Time
}

func newSealKeys() *sealKeys { return &sealKeys{keys: make(map[string]sealKey)} }

func (k *sealKeys) put(sessionID string, key []byte, expires time.Time, now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	// Drop expired and excess keys from the front.
	for len(k.order) > 0 {
		old := k.order[0]
		e, ok := k.keys[old]
		if ok && now.Before(e.expires) && len(k.keys) < maxSealKeys {
			break
		}
		delete(k.keys, old)
		k.order = k.order[1:]
	}
	k.keys[sessionID] = sealKey{key: key, expires: expires}
	k.order = append(k.order, sessionID)
}

func (k *sealKeys) get(sessionID string, now time.Time) ([]byte, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.keys[sessionID]
	if !ok || !now.Before(e.expires) {
		return nil, false
	}
	return e.key, true
}

// SealKey returns the key that seals session sessionID's responses for
// transports a third party can read (MQTT), while the session lives. The
// device derives the same key from the secret its TPM recovered.
func (s *Server) SealKey(sessionID string) ([]byte, bool) {
	return s.seal.get(sessionID, s.cfg.Now())
}
