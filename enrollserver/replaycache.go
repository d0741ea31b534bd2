package enrollserver

import (
	"crypto/sha256"
	"maps"
	"slices"

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
type replayCache = memo[*firmware.Measurements]

// replayKey covers the log, each quoted PCR in index order (index, value)
// and the required PCRs in order.
func replayKey(eventLog []byte, quoted map[int][]byte, required []int) [sha256.Size]byte {
	k := newMemoKey("edgeenroll replay cache v2")
	k.bytes(eventLog)
	idx := slices.Sorted(maps.Keys(quoted))
	k.int(len(idx))
	for _, i := range idx {
		k.int(i)
		k.bytes(quoted[i])
	}
	req := slices.Sorted(slices.Values(required))
	k.int(len(req))
	for _, i := range req {
		k.int(i)
	}
	return k.sum()
}

// replay returns the verified view of eventLog against quoted: from c, or
// from firmware.ParseMeasurements and Log.Replay (remembered on success).
// hit reports a cache hit. A nil cache always replays.
func replay(c *replayCache, eventLog []byte, quoted map[int][]byte, required []int) (m *firmware.Measurements, hit bool, err error) {
	var key [sha256.Size]byte
	if c != nil {
		key = replayKey(eventLog, quoted, required)
		if m, ok := c.get(key); ok {
			return m, true, nil
		}
	}
	lg, err := firmware.ParseMeasurements(eventLog)
	if err != nil {
		return nil, false, err
	}
	if m, err = lg.Replay(quoted, required); err != nil {
		return nil, false, err
	}
	c.add(key, m)
	return m, false, nil
}
