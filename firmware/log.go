package firmware

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	goattest "github.com/google/go-attestation/attest"
)

// Log is a parsed TCG event log. Nothing in it is verified: every event
// could have been made up by the device. Log.Replay checks it against quoted
// PCR values and returns the verified view, Measurements.
type Log struct {
	el     *goattest.EventLog
	format LogFormat
	// events are the log's events with their SHA-256 digests (empty for a
	// SHA-1 log), for caps and coverage checks only.
	events []goattest.Event
}

// Event is one event as the log states it. Every field is untrusted.
type Event struct {
	PCR  int
	Type EventType
	Data []byte
	// SHA256 is the event's SHA-256 digest, or nil if it has none.
	SHA256 []byte
}

// specIDSignature starts the data of the first event of a crypto-agile log
// (TCG_EfiSpecIDEvent in the PFP's "Event Logging" chapter).
var specIDSignature = []byte("Spec ID Event03\x00")

// ParseMeasurements parses a TCG event log in the crypto-agile (TPM 2.0) or
// the legacy SHA-1 format, with go-attestation's ParseEventLog, and returns
// it UNVERIFIED:
//
//  1. Bounds: 1..MaxEventLogSize bytes.
//  2. Decode: the whole input is a sequence of events, with no trailing
//     bytes (a crypto-agile log's first event is its Spec ID header).
//  3. Static: at most MaxEvents events, each at most MaxEventDataSize bytes
//     of data, on PCRs 0..MaxPCRs-1.
//
// Every failure is a *ReplayError with ReasonMalformed. Nothing about the
// log's content may be used before Log.Replay has checked it against a
// verified quote.
func ParseMeasurements(eventLog []byte) (*Log, error) {
	// Step 1: bounds, before any decoding.
	if len(eventLog) == 0 || len(eventLog) > MaxEventLogSize {
		return nil, replayErr(ReasonMalformed, nil, nil, "event log of %d bytes, want 1..%d", len(eventLog), MaxEventLogSize)
	}

	// Step 2: decode. go-attestation's parser costs, per digest of each
	// event, a pass over every algorithm the header declares, and bounds
	// neither count: a crafted 1 MiB log cost ~14 s of CPU. The shape is
	// checked first, in one linear pass.
	if isCryptoAgile(eventLog) {
		if err := checkAgileShape(eventLog); err != nil {
			return nil, replayErr(ReasonMalformed, nil, err, "parsing event log")
		}
	}
	el, err := goattest.ParseEventLog(eventLog)
	if err != nil {
		return nil, replayErr(ReasonMalformed, nil, err, "parsing event log")
	}
	l := &Log{el: el, format: FormatSHA1}
	if isCryptoAgile(eventLog) {
		l.format = FormatCryptoAgile
	}

	// Step 3: static validation of what was decoded.
	l.events = el.Events(goattest.HashSHA256)
	if len(l.events) > MaxEvents {
		return nil, replayErr(ReasonMalformed, nil, nil, "event log has %d events, at most %d", len(l.events), MaxEvents)
	}
	for i, e := range l.events {
		if e.Index < 0 || e.Index >= MaxPCRs {
			return nil, replayErr(ReasonMalformed, nil, nil, "event %d: PCR index %d out of range 0..%d", i, uint32(e.Index), MaxPCRs-1)
		}
		if len(e.Data) > MaxEventDataSize {
			return nil, replayErr(ReasonMalformed, []int{e.Index}, nil, "event %d: %d bytes of data, at most %d", i, len(e.Data), MaxEventDataSize)
		}
	}
	return l, nil
}

// isCryptoAgile reports whether the log starts with a TCG_PCR_EVENT whose
// data is a Spec ID Event03 structure. ParseEventLog accepted the log, so
// when the signature is there the header parsed.
func isCryptoAgile(b []byte) bool {
	const dataOffset = 4 + 4 + 20 + 4 // PCRIndex, EventType, SHA-1 digest, EventSize
	return len(b) >= dataOffset+len(specIDSignature) &&
		binary.LittleEndian.Uint32(b[4:8]) == uint32(EV_NO_ACTION) &&
		bytes.Equal(b[dataOffset:dataOffset+len(specIDSignature)], specIDSignature)
}

// Format returns the log's encoding.
func (l *Log) Format() LogFormat { return l.format }

// UntrustedEvents returns the events as the log states them, in log order
// (without a crypto-agile log's Spec ID header). They are NOT verified: use
// them for debugging only, and Measurements for decisions.
func (l *Log) UntrustedEvents() []Event {
	out := make([]Event, len(l.events))
	for i, e := range l.events {
		out[i] = Event{PCR: e.Index, Type: EventType(e.Type), Data: bytes.Clone(e.Data), SHA256: bytes.Clone(e.Digest)}
	}
	return out
}

// maxLogAlgorithms bounds the digest algorithms a crypto-agile log may
// declare: the TCG registry's hashes a PC client uses (SHA-1, SHA-256,
// SHA-384, SHA-512, SM3-256) with room to spare.
const maxLogAlgorithms = 8

// checkAgileShape walks a crypto-agile log's header and event headers once,
// without go-attestation, and refuses what would make its parser
// quadratic: more than maxLogAlgorithms declared algorithms, an algorithm
// declared twice, an event with more digests than algorithms declared, one
// algorithm twice in an event or one not declared, or more than MaxEvents
// events. Anything else it cannot walk (truncation) is left to
// go-attestation to refuse.
func checkAgileShape(b []byte) error {
	le := binary.LittleEndian
	const dataOffset = 4 + 4 + 20 + 4
	size := int(le.Uint32(b[dataOffset-4 : dataOffset]))
	if size > len(b)-dataOffset {
		return errors.New("spec ID header truncated")
	}
	spec := b[dataOffset : dataOffset+size]
	rest := b[dataOffset+size:]
	// signature, platformClass, 4 version bytes, numberOfAlgorithms
	const algsOffset = 16 + 4 + 4 + 4
	if len(spec) < algsOffset {
		return errors.New("spec ID header truncated")
	}
	n := le.Uint32(spec[algsOffset-4 : algsOffset])
	if n == 0 || n > maxLogAlgorithms {
		return fmt.Errorf("spec ID header declares %d digest algorithms, want 1..%d", n, maxLogAlgorithms)
	}
	if len(spec) < algsOffset+4*int(n) {
		return errors.New("spec ID header truncated")
	}
	sizes := make(map[uint16]int, n)
	for i := range int(n) {
		a := spec[algsOffset+4*i:]
		alg := le.Uint16(a)
		if _, dup := sizes[alg]; dup {
			return fmt.Errorf("spec ID header declares digest algorithm %#04x twice", alg)
		}
		sizes[alg] = int(le.Uint16(a[2:]))
	}
	for events := 0; len(rest) > 0; events++ {
		if events == MaxEvents {
			return fmt.Errorf("event log has more than %d events", MaxEvents)
		}
		if len(rest) < 12 {
			return nil
		}
		count := le.Uint32(rest[8:12])
		if count > n {
			return fmt.Errorf("event %d has %d digests, the header declares %d algorithms", events, count, n)
		}
		rest = rest[12:]
		var seen [maxLogAlgorithms]uint16
		for j := range int(count) {
			if len(rest) < 2 {
				return nil
			}
			alg := le.Uint16(rest)
			sz, ok := sizes[alg]
			if !ok {
				return fmt.Errorf("event %d has a digest of algorithm %#04x, not declared in the header", events, alg)
			}
			if slices.Contains(seen[:j], alg) {
				return fmt.Errorf("event %d has two digests of algorithm %#04x", events, alg)
			}
			seen[j] = alg
			if len(rest) < 2+sz {
				return nil
			}
			rest = rest[2+sz:]
		}
		if len(rest) < 4 {
			return nil
		}
		data := int(le.Uint32(rest))
		if data > len(rest)-4 {
			return nil
		}
		rest = rest[4+data:]
	}
	return nil
}
