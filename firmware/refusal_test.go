package firmware_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

// evidence is what the server holds after attest.VerifyQuote: the log bytes
// the device sent and the quoted PCR values.
type evidence struct {
	log    []byte
	quoted map[int][]byte
}

// honest is a log and the PCRs it was really extended into.
func honest(l *elt.Log) evidence { return evidence{log: l.Bytes(), quoted: l.PCRs()} }

// TestRefusals runs the whole pipeline (ParseMeasurements, Replay with the
// policy's required PCRs, Evaluate) with one case per way a measured boot is
// refused, and checks the verdict's reason and type.
func TestRefusals(t *testing.T) {
	policy := firmware.Policy{
		Approved:          []firmware.Reference{defaultReference(t)},
		RequireSecureBoot: true,
	}
	for _, tc := range []struct {
		name     string
		evidence func() evidence
		required []int
		want     firmware.Reason
		policy   bool // the refusal comes from Evaluate
	}{
		// event_log_mismatch
		{
			name: "one event digest altered",
			evidence: func() evidence {
				l := elt.New(nil)
				quoted := l.PCRs()
				l.Events[l.Index(4, elt.EV_EFI_BOOT_SERVICES_APPLICATION)].SHA256[7] ^= 0x40
				return evidence{l.Bytes(), quoted}
			},
			want: firmware.ReasonEventLogMismatch,
		},
		{
			name: "event measured after the quote",
			evidence: func() evidence {
				l := elt.New(nil)
				quoted := l.PCRs()
				l.Events = append(l.Events, elt.NewMeasurement(4, elt.EV_EFI_BOOT_SERVICES_APPLICATION, nil, []byte("loaded later")))
				return evidence{l.Bytes(), quoted}
			},
			want: firmware.ReasonEventLogMismatch,
		},
		{
			name: "event left out of the log",
			evidence: func() evidence {
				l := elt.New(nil)
				quoted := l.PCRs()
				i := l.Index(1, elt.EV_EFI_VARIABLE_BOOT)
				l.Events = slices.Delete(l.Events, i, i+1)
				return evidence{l.Bytes(), quoted}
			},
			want: firmware.ReasonEventLogMismatch,
		},
		{
			name: "events swapped between PCRs",
			evidence: func() evidence {
				l := elt.New(nil)
				quoted := l.PCRs()
				i := l.Index(4, elt.EV_EFI_BOOT_SERVICES_APPLICATION)
				l.Events[i].PCR = 5
				return evidence{l.Bytes(), quoted}
			},
			want: firmware.ReasonEventLogMismatch,
		},
		{
			name: "separator missing (log and PCRs agree)",
			evidence: func() evidence {
				l := elt.New(nil)
				i := l.Index(3, elt.EV_SEPARATOR)
				l.Events = slices.Delete(l.Events, i, i+1)
				return honest(l)
			},
			want: firmware.ReasonEventLogMismatch,
		},
		{
			name: "separator reports an error",
			evidence: func() evidence {
				return honest(withEvent(2, elt.EV_SEPARATOR, elt.NewEvent(2, elt.EV_SEPARATOR, []byte{1, 0, 0, 0})))
			},
			want: firmware.ReasonEventLogMismatch,
		},
		{
			name: "separator measured twice",
			evidence: func() evidence {
				l := elt.New(nil)
				l.Events = append(l.Events, elt.NewEvent(6, elt.EV_SEPARATOR, []byte{0, 0, 0, 0}))
				return honest(l)
			},
			want: firmware.ReasonEventLogMismatch,
		},
		{
			name: "required PCR extended but absent from the log",
			evidence: func() evidence {
				e := honest(elt.New(nil))
				e.quoted[9] = sum([]byte("grub measured something"))
				return e
			},
			required: []int{9},
			want:     firmware.ReasonEventLogMismatch,
		},
		{
			name:     "legacy SHA-1 log",
			evidence: func() evidence { l := elt.New(nil); return evidence{l.LegacyBytes(), l.PCRs()} },
			want:     firmware.ReasonEventLogMismatch,
		},

		// pcr_not_quoted
		{
			name: "firmware PCR not quoted",
			evidence: func() evidence {
				e := honest(elt.New(nil))
				delete(e.quoted, 7)
				return e
			},
			want: firmware.ReasonPCRNotQuoted,
		},
		{
			name:     "required PCR not quoted",
			evidence: func() evidence { return honest(elt.New(nil)) },
			required: []int{14},
			want:     firmware.ReasonPCRNotQuoted,
		},
		{
			name: "log measures a PCR that was not quoted",
			evidence: func() evidence {
				l := elt.New(nil)
				quoted := l.PCRs()
				l.Events = append(l.Events, elt.NewEvent(14, elt.EV_EFI_ACTION, []byte("MokList")))
				return evidence{l.Bytes(), quoted}
			},
			want: firmware.ReasonPCRNotQuoted,
		},

		// malformed
		{
			name:     "truncated log",
			evidence: func() evidence { e := honest(elt.New(nil)); e.log = e.log[:len(e.log)-9]; return e },
			want:     firmware.ReasonMalformed,
		},
		{
			name:     "garbage",
			evidence: func() evidence { return evidence{bytes.Repeat([]byte{0xA5}, 300), elt.New(nil).PCRs()} },
			want:     firmware.ReasonMalformed,
		},
		{
			name:     "trailing bytes",
			evidence: func() evidence { e := honest(elt.New(nil)); e.log = append(e.log, 0, 0, 0); return e },
			want:     firmware.ReasonMalformed,
		},
		{
			name:     "empty log",
			evidence: func() evidence { return evidence{nil, elt.New(nil).PCRs()} },
			want:     firmware.ReasonMalformed,
		},
		{
			name: "oversized log",
			evidence: func() evidence {
				e := honest(elt.New(nil))
				e.log = append(e.log, make([]byte, firmware.MaxEventLogSize)...)
				return e
			},
			want: firmware.ReasonMalformed,
		},
		{
			name: "too many events",
			evidence: func() evidence {
				l := elt.New(nil)
				for range firmware.MaxEvents {
					l.Events = append(l.Events, elt.NewEvent(5, elt.EV_EFI_ACTION, nil))
				}
				return honest(l)
			},
			want: firmware.ReasonMalformed,
		},
		{
			name: "oversized event data",
			evidence: func() evidence {
				l := elt.New(nil)
				l.Events = append(l.Events, elt.NewEvent(5, elt.EV_EFI_ACTION, make([]byte, firmware.MaxEventDataSize+1)))
				return honest(l)
			},
			want: firmware.ReasonMalformed,
		},
		{
			name: "PCR index out of range",
			evidence: func() evidence {
				l := elt.New(nil)
				quoted := l.PCRs()
				l.Events = append(l.Events, elt.NewEvent(24, elt.EV_EFI_ACTION, nil))
				return evidence{l.Bytes(), quoted}
			},
			want: firmware.ReasonMalformed,
		},

		// firmware_not_approved
		{
			name: "firmware not approved",
			evidence: func() evidence {
				return honest(elt.New(&elt.Options{FirmwareVersion: "EdgeEnroll Test Firmware 0.9 (vulnerable)"}))
			},
			want:   firmware.ReasonFirmwareNotApproved,
			policy: true,
		},

		// secure_boot_disabled
		{
			name:     "secure boot disabled while required",
			evidence: func() evidence { return honest(elt.New(&elt.Options{SecureBootDisabled: true})) },
			want:     firmware.ReasonSecureBootDisabled,
			policy:   true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev := tc.evidence()
			p := policy
			p.RequiredPCRs = tc.required
			err := func() error {
				lg, err := firmware.ParseMeasurements(ev.log)
				if err != nil {
					return err
				}
				m, err := lg.Replay(ev.quoted, p.RequiredPCRs)
				if err != nil {
					return err
				}
				return p.Evaluate(m)
			}()
			wantReason(t, err, tc.want, tc.policy)
		})
	}
}

// TestAccepted is the happy path of the same pipeline, including required
// PCRs beyond 0-7 that the log does not measure (at their reset value).
func TestAccepted(t *testing.T) {
	ref := defaultReference(t)
	l := elt.New(nil)
	quoted := l.PCRs()
	quoted[8] = make([]byte, 32)
	quoted[17] = bytes.Repeat([]byte{0xFF}, 32)
	quoted[10] = sum([]byte("IMA measured at runtime")) // quoted, not required, not in the log: ignored
	p := firmware.Policy{Approved: []firmware.Reference{{Name: "other", FirmwareDigest: "00" + ref.FirmwareDigest[2:]}, ref}, RequireSecureBoot: true, RequiredPCRs: []int{8, 17}}
	lg, err := firmware.ParseMeasurements(l.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	m, err := lg.Replay(quoted, p.RequiredPCRs)
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	got, err := p.Match(m)
	if err != nil {
		t.Fatalf("Match: %v", err)
	}
	if got != ref {
		t.Fatalf("matched %+v, want %+v", got, ref)
	}
	if _, ok := m.PCRs()[10]; ok {
		t.Fatal("PCR 10 (not required, not in the log) reported as replayed")
	}
}
