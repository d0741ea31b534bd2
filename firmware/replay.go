package firmware

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	goattest "github.com/google/go-attestation/attest"
)

// Replay checks the log against quoted PCR values and returns what it proves
// about the boot. quoted maps PCR index to its 32-byte SHA-256 value, as
// attest.VerifyQuote returns it: Replay trusts that these are the values a
// genuine TPM quoted over a fresh nonce, and checks nothing about the quote
// itself. required lists PCRs a policy needs (Policy.RequiredPCRs); PCRs
// 0-7 are always needed. The steps, in order:
//
//  1. Arguments: quoted indices 0..MaxPCRs-1 with 32-byte values, required
//     indices in range (otherwise an ErrInvalidArgument fault, not a
//     verdict: attest.VerifyQuote never returns anything else).
//  2. Coverage: every firmware PCR (0-7), every required PCR and every PCR
//     the log measures into was quoted (ReasonPCRNotQuoted). Events on a
//     PCR that was not quoted could not be checked, so the log is refused
//     rather than partly believed: devices quote every PCR their log
//     touches.
//  3. Bank: the log has SHA-256 digests; a legacy SHA-1 log cannot be
//     replayed against the SHA-256 bank (ReasonEventLogMismatch).
//  4. Replay: go-attestation's EventLog.Verify recomputes each of those
//     PCRs from its events (from the reset value, or the locality of a
//     StartupLocality event for PCR 0) and must arrive at the quoted value.
//     An altered, missing or extra event (such as one measured after the
//     quote was made), or events reordered within a PCR, fail
//     (ReasonEventLogMismatch). The order of events across PCRs is not
//     covered by any PCR and is not relied on.
//     go-attestation retries with its named workarounds for known firmware
//     quirks (Exit Boot Services events missing from PCR 5's log).
//  5. Required PCRs the log does not measure must be at their reset value:
//     otherwise something measured into them that the log does not show
//     (ReasonEventLogMismatch).
//  6. Structure: each of PCRs 0-7 has exactly one EV_SEPARATOR, with data
//     0x00000000 (not the error value) and a digest of that data: the
//     firmware finished its pre-boot measurements and did not report an
//     error (ReasonEventLogMismatch).
//  7. Extraction from the verified events (see Measurements).
//
// Every refusal is a *ReplayError. Replay does NOT judge the result: that is
// Policy.Evaluate.
func (l *Log) Replay(quoted map[int][]byte, required []int) (*Measurements, error) {
	if l == nil || l.el == nil {
		return nil, fmt.Errorf("%w: Replay on a Log not made by ParseMeasurements", ErrInvalidArgument)
	}

	// Step 1: arguments.
	for i, d := range quoted {
		if i < 0 || i >= MaxPCRs {
			return nil, fmt.Errorf("%w: quoted PCR index %d out of range 0..%d", ErrInvalidArgument, i, MaxPCRs-1)
		}
		if len(d) != PCRDigestSize {
			return nil, fmt.Errorf("%w: quoted PCR %d value of %d bytes, want %d (SHA-256)", ErrInvalidArgument, i, len(d), PCRDigestSize)
		}
	}
	for _, i := range required {
		if i < 0 || i >= MaxPCRs {
			return nil, fmt.Errorf("%w: required PCR index %d out of range 0..%d", ErrInvalidArgument, i, MaxPCRs-1)
		}
	}

	// Step 2: coverage.
	var needed, touched [MaxPCRs]bool
	for i := 0; i <= LastFirmwarePCR; i++ {
		needed[i] = true
	}
	for _, i := range required {
		needed[i] = true
	}
	for _, e := range l.events {
		if EventType(e.Type) != EV_NO_ACTION {
			touched[e.Index] = true
			needed[e.Index] = true
		}
	}
	var missing, pcrIndices []int
	for i := range MaxPCRs {
		if !needed[i] {
			continue
		}
		if _, ok := quoted[i]; !ok {
			missing = append(missing, i)
		}
		pcrIndices = append(pcrIndices, i)
	}
	if len(missing) > 0 {
		return nil, replayErr(ReasonPCRNotQuoted, missing, nil,
			"PCRs %v were not quoted (firmware PCRs 0-%d, PCRs the policy requires and every PCR the log measures must be)", missing, LastFirmwarePCR)
	}

	// Step 3: a SHA-256 bank to replay.
	if l.format == FormatSHA1 {
		return nil, replayErr(ReasonEventLogMismatch, nil, nil, "legacy SHA-1 event log: it has no SHA-256 digests to replay against the quoted SHA-256 PCRs")
	}
	if !slices.Contains(l.el.Algs, goattest.HashSHA256) {
		return nil, replayErr(ReasonEventLogMismatch, nil, nil, "event log records no SHA-256 digests (banks %v)", l.el.Algs)
	}

	// Step 4: replay.
	pcrs := make([]goattest.PCR, 0, len(pcrIndices))
	for _, i := range pcrIndices {
		pcrs = append(pcrs, goattest.PCR{Index: i, Digest: bytes.Clone(quoted[i]), DigestAlg: crypto.SHA256})
	}
	events, err := l.el.Verify(pcrs)
	if err != nil {
		var re goattest.ReplayError
		var bad []int
		if errors.As(err, &re) {
			bad = re.InvalidPCRs
		}
		return nil, replayErr(ReasonEventLogMismatch, bad, err,
			"the event log does not replay to the quoted PCR values (an event was altered, left out, or measured after the quote)")
	}

	// Step 5: required PCRs without events are at their reset value.
	for _, i := range pcrIndices {
		if !touched[i] && !bytes.Equal(quoted[i], resetValue(i)) {
			return nil, replayErr(ReasonEventLogMismatch, []int{i}, nil,
				"PCR %d was extended but the event log has no events for it", i)
		}
	}

	// Step 6: one clean separator on each firmware PCR.
	if err := checkSeparators(events); err != nil {
		return nil, err
	}

	// Step 7: what the verified events say.
	return newMeasurements(events, quoted, pcrIndices), nil
}

// resetValue is a PCR's value after TPM2_Startup(CLEAR) at locality 0 (PC
// Client Platform TPM Profile, 4.6): all ones for the DRTM PCRs 17-22, all
// zeros otherwise.
func resetValue(i int) []byte {
	v := make([]byte, PCRDigestSize)
	if i >= 17 && i <= 22 {
		for j := range v {
			v[j] = 0xFF
		}
	}
	return v
}

// separatorData is the data of an EV_SEPARATOR that reports no error
// (PFP 1.05, EV_SEPARATOR in "Event Types").
var separatorData = []byte{0, 0, 0, 0}

// checkSeparators requires exactly one EV_SEPARATOR on each of PCRs 0-7,
// with data 0x00000000 and a digest of that data.
func checkSeparators(events []goattest.Event) error {
	var count [LastFirmwarePCR + 1]int
	for _, e := range events {
		if e.Index > LastFirmwarePCR || EventType(e.Type) != EV_SEPARATOR {
			continue
		}
		count[e.Index]++
		if !bytes.Equal(e.Data, separatorData) {
			return replayErr(ReasonEventLogMismatch, []int{e.Index}, nil,
				"PCR %d: EV_SEPARATOR data is %x, want 00000000 (the firmware reported an error, or the event is not a separator)", e.Index, e.Data)
		}
		if !digestBinds(e) {
			return replayErr(ReasonEventLogMismatch, []int{e.Index}, nil, "PCR %d: EV_SEPARATOR digest is not of its data", e.Index)
		}
	}
	var absent, repeated []int
	for i, n := range count {
		switch {
		case n == 0:
			absent = append(absent, i)
		case n > 1:
			repeated = append(repeated, i)
		}
	}
	if len(absent) > 0 {
		return replayErr(ReasonEventLogMismatch, absent, nil, "PCRs %v have no EV_SEPARATOR: the log does not describe a complete pre-boot", absent)
	}
	if len(repeated) > 0 {
		return replayErr(ReasonEventLogMismatch, repeated, nil, "PCRs %v have more than one EV_SEPARATOR", repeated)
	}
	return nil
}

// digestBinds reports whether a verified event's SHA-256 digest is the
// digest of its data, which makes the data as trustworthy as the digest.
func digestBinds(e goattest.Event) bool {
	s := sha256.Sum256(e.Data)
	return len(e.Digest) == sha256.Size && bytes.Equal(e.Digest, s[:])
}
