package eventlogtest_test

import (
	"bytes"
	"crypto"
	"slices"
	"sort"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

// The generator is checked against go-attestation directly (not through
// package firmware), so a bug shared by the generator and firmware cannot
// hide.

func pcrList(m map[int][]byte, alg crypto.Hash) []goattest.PCR {
	var out []goattest.PCR
	for i, d := range m {
		out = append(out, goattest.PCR{Index: i, Digest: d, DigestAlg: alg})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Index < out[b].Index })
	return out
}

func TestGeneratedLogsReplayInGoAttestation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   *eventlogtest.Options
		wantSB bool
	}{
		{"default", nil, true},
		{"secure boot off", &eventlogtest.Options{SecureBootDisabled: true}, false},
		{"both banks", &eventlogtest.Options{SHA1: true}, true},
		{"other firmware", &eventlogtest.Options{FirmwareVersion: "2.0", BootLoader: []byte("grub"), Kernel: []byte("linux")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := eventlogtest.New(tc.opts)
			el, err := goattest.ParseEventLog(l.Bytes())
			if err != nil {
				t.Fatalf("ParseEventLog: %v", err)
			}
			events, err := el.Verify(pcrList(l.PCRs(), crypto.SHA256))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if len(events) != len(l.Events) {
				t.Errorf("verified %d events, generated %d", len(events), len(l.Events))
			}
			sb, err := goattest.ParseSecurebootState(events)
			if err != nil {
				t.Fatalf("ParseSecurebootState: %v", err)
			}
			if sb.Enabled != tc.wantSB {
				t.Errorf("secure boot enabled = %v, want %v", sb.Enabled, tc.wantSB)
			}
			if len(sb.PlatformKeys) != 1 || len(sb.ExchangeKeys) != 1 || len(sb.PermittedKeys) != 1 || len(sb.ForbiddenHashes) != 3 {
				t.Errorf("secure boot keys: %d PK, %d KEK, %d db, %d dbx hashes; want 1, 1, 1, 3",
					len(sb.PlatformKeys), len(sb.ExchangeKeys), len(sb.PermittedKeys), len(sb.ForbiddenHashes))
			}
			if tc.opts != nil && tc.opts.SHA1 {
				if _, err := el.Verify(pcrList(l.SHA1PCRs(), crypto.SHA1)); err != nil {
					t.Errorf("Verify SHA-1 bank: %v", err)
				}
			}
		})
	}
}

func TestLegacyFormatReplaysSHA1Bank(t *testing.T) {
	l := eventlogtest.New(nil)
	el, err := goattest.ParseEventLog(l.LegacyBytes())
	if err != nil {
		t.Fatalf("ParseEventLog: %v", err)
	}
	if len(el.Algs) != 1 || el.Algs[0] != goattest.HashSHA1 {
		t.Errorf("algorithms = %v, want SHA-1 only", el.Algs)
	}
	if _, err := el.Verify(pcrList(l.SHA1PCRs(), crypto.SHA1)); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestDeterministic(t *testing.T) {
	a, b := eventlogtest.New(nil).Bytes(), eventlogtest.New(nil).Bytes()
	if !bytes.Equal(a, b) {
		t.Fatal("two default logs differ")
	}
	c := eventlogtest.New(&eventlogtest.Options{FirmwareVersion: "other"}).PCRs()
	if bytes.Equal(c[0], eventlogtest.New(nil).PCRs()[0]) {
		t.Fatal("another firmware version gives the same PCR 0")
	}
}

func TestExtendsMatchPCRs(t *testing.T) {
	l := eventlogtest.New(nil)
	if got, want := len(l.Extends()), len(l.Events); got != want {
		t.Fatalf("%d extends for %d measured events", got, want)
	}
	if got := l.TouchedPCRs(); len(got) != 8 || got[0] != 0 || got[7] != 7 {
		t.Fatalf("touched PCRs = %v, want 0..7", got)
	}
}

func TestRealisticLog(t *testing.T) {
	l := eventlogtest.New(eventlogtest.Realistic())
	if n := len(l.Events); n != 301 {
		t.Errorf("realistic log has %d events, want 301", n)
	}
	if got, want := l.TouchedPCRs(), []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}; !slices.Equal(got, want) {
		t.Errorf("touched PCRs = %v, want %v", got, want)
	}
	el, err := goattest.ParseEventLog(l.Bytes())
	if err != nil {
		t.Fatalf("ParseEventLog: %v", err)
	}
	if _, err := el.Verify(pcrList(l.PCRs(), crypto.SHA256)); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	t.Logf("realistic log: %d events, %d bytes", len(l.Events), len(l.Bytes()))
}
