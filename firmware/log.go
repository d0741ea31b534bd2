package firmware

import (
	"bytes"
	"encoding/binary"

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

	// Step 2: decode.
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
