package firmware_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/edgeenroll/edgeenroll/firmware"
)

// agileLog is a crypto-agile log whose header declares nAlgs algorithms
// (nAlgs-1 unknown ones, then SHA-256 with a 1-byte digest size) followed
// by one event with as many 1-byte "SHA-256" digests (perEvent) as fit,
// or perEvent of them. Such a log cost go-attestation's parser ~14 s of CPU
// at 1 MiB, quadratic in the declared algorithms times the digests.
func agileLog(nAlgs, perEvent int) []byte {
	le := binary.LittleEndian
	spec := []byte("Spec ID Event03\x00")
	spec = le.AppendUint32(spec, 0)
	spec = append(spec, 0, 2, 0, 2)
	spec = le.AppendUint32(spec, uint32(nAlgs))
	for range nAlgs - 1 {
		spec = le.AppendUint16(spec, 0x7fff)
		spec = le.AppendUint16(spec, 1)
	}
	spec = le.AppendUint16(spec, 0x000b)
	spec = le.AppendUint16(spec, 1)
	spec = append(spec, 0)
	var b []byte
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, 0x3) // EV_NO_ACTION
	b = append(b, make([]byte, 20)...)
	b = le.AppendUint32(b, uint32(len(spec)))
	b = append(b, spec...)
	n := perEvent
	if n == 0 {
		n = (firmware.MaxEventLogSize - len(b) - 16) / 3
	}
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, 0xd)
	b = le.AppendUint32(b, uint32(n))
	for range n {
		b = le.AppendUint16(b, 0x000b)
		b = append(b, 0xaa)
	}
	return le.AppendUint32(b, 0)
}

// TestParseMeasurementsRefusesQuadraticShapes: a header declaring too many
// algorithms, or an event with more digests than the header declares
// algorithms, is refused as malformed before go-attestation parses it (the
// review's 1 MiB log took 14 s; this test would take minutes without the
// check). A well-shaped log of the same kind still parses.
func TestParseMeasurementsRefusesQuadraticShapes(t *testing.T) {
	for name, log := range map[string][]byte{
		"131072 algorithms declared":   agileLog(1<<17, 0),
		"9 algorithms declared":        agileLog(9, 1),
		"170,000 digests in one event": agileLog(1, 0),
		"two digests, one algorithm":   agileLog(1, 2),
	} {
		_, err := firmware.ParseMeasurements(log)
		var re *firmware.ReplayError
		if !errors.As(err, &re) || re.Reason != firmware.ReasonMalformed {
			t.Errorf("%s: %v, want a malformed log", name, err)
		}
	}
	dup := agileLog(2, 1)
	// Make the first declared algorithm SHA-256 too.
	off := 4 + 4 + 20 + 4 + 16 + 4 + 4 + 4
	binary.LittleEndian.PutUint16(dup[off:], 0x000b)
	if _, err := firmware.ParseMeasurements(dup); err == nil {
		t.Error("a header declaring SHA-256 twice was accepted")
	}
	if _, err := firmware.ParseMeasurements(agileLog(1, 1)); err != nil {
		t.Errorf("a well-shaped log: %v", err)
	}
}
