package firmware_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

// FuzzParseMeasurements feeds arbitrary bytes to ParseMeasurements and, when
// they parse, replays them. Invariants:
//
//   - no panic;
//   - every refusal is a *ReplayError with a known Reason (malformed from
//     parsing);
//   - parse and replay never disagree: the PCR values obtained by replaying
//     the log's own (untrusted) SHA-256 digests independently are accepted
//     by go-attestation's replay inside Replay, so Replay can refuse them
//     only for a structural reason, never as a replay mismatch;
//   - accepted measurements are self-consistent (FirmwareDigest is the
//     documented hash of PCR 0, PCRs are the values given).
//
// The seed corpus is testdata/fuzz/FuzzParseMeasurements (written by
// TestGolden -update) plus the generator's logs added here.
func FuzzParseMeasurements(f *testing.F) {
	for _, o := range []*elt.Options{nil, {SecureBootDisabled: true}, {SHA1: true}} {
		l := elt.New(o)
		f.Add(l.Bytes())
		f.Add(l.LegacyBytes())
		b := l.Bytes()
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte{})
	f.Add([]byte("\x00\x00\x00\x00\x03\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		lg, err := firmware.ParseMeasurements(b)
		if err != nil {
			var re *firmware.ReplayError
			if !errors.As(err, &re) || re.Reason != firmware.ReasonMalformed {
				t.Fatalf("parse refusal is not a malformed *ReplayError: %v", err)
			}
			return
		}
		events := lg.UntrustedEvents()
		if len(events) > firmware.MaxEvents {
			t.Fatalf("accepted %d events", len(events))
		}
		quoted, computable := selfReplay(events)
		m, err := lg.Replay(quoted, nil)
		if err != nil {
			var re *firmware.ReplayError
			if !errors.As(err, &re) || !strings.HasPrefix(err.Error(), "firmware: "+re.Reason.String()) {
				t.Fatalf("replay refusal is not a *ReplayError: %v", err)
			}
			if re.Reason != firmware.ReasonEventLogMismatch {
				t.Fatalf("all 24 PCRs quoted, yet refused with %v", err)
			}
			var gr goattest.ReplayError
			if computable && lg.Format() == firmware.FormatCryptoAgile && errors.As(err, &gr) {
				t.Fatalf("the log's own digests do not replay in Replay: %v", err)
			}
			return
		}
		want := sha256.Sum256(append([]byte(firmware.FirmwareDigestDomain), quoted[0]...))
		if got := m.FirmwareDigest(); got != hex.EncodeToString(want[:]) {
			t.Fatalf("FirmwareDigest = %s, want %x", got, want)
		}
		for i, d := range m.PCRs() {
			if !bytes.Equal(d, quoted[i]) {
				t.Fatalf("PCR %d = %x, quoted %x", i, d, quoted[i])
			}
		}
		if m.SecureBootEnabled() == (m.SecureBootDetail() != "") {
			t.Fatalf("SecureBootEnabled = %v with detail %q", m.SecureBootEnabled(), m.SecureBootDetail())
		}
	})
}

// selfReplay computes SHA-256 PCR values 0..23 from the events' own
// digests, the way a TPM would have extended them (PCR 0 starting at the
// locality of a StartupLocality event, as go-attestation does). computable
// is false when some measured event lacks a 32-byte SHA-256 digest.
func selfReplay(events []firmware.Event) (map[int][]byte, bool) {
	pcrs := make(map[int][]byte, firmware.MaxPCRs)
	extended := make(map[int]bool)
	var locality byte
	computable := true
	for i := range firmware.MaxPCRs {
		pcrs[i] = make([]byte, 32)
		if i >= 17 && i <= 22 {
			pcrs[i] = bytes.Repeat([]byte{0xFF}, 32)
		}
	}
	for _, e := range events {
		if e.Type == firmware.EV_NO_ACTION {
			if e.PCR == 0 && len(e.Data) == 17 && strings.HasPrefix(string(e.Data), "StartupLocality") {
				locality = e.Data[16]
			}
			continue
		}
		if len(e.SHA256) != 32 {
			computable = false
			continue
		}
		v := pcrs[e.PCR]
		if !extended[e.PCR] {
			v = make([]byte, 32)
			v[31] = locality
			if e.PCR != 0 {
				v[31] = 0
			}
		}
		s := sha256.Sum256(append(bytes.Clone(v), e.SHA256...))
		pcrs[e.PCR] = s[:]
		extended[e.PCR] = true
	}
	return pcrs, computable
}
