package firmware_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

func TestReasonCodes(t *testing.T) {
	for r, want := range map[firmware.Reason]string{
		firmware.ReasonMalformed:           "malformed",
		firmware.ReasonEventLogMismatch:    "event_log_mismatch",
		firmware.ReasonPCRNotQuoted:        "pcr_not_quoted",
		firmware.ReasonFirmwareNotApproved: "firmware_not_approved",
		firmware.ReasonSecureBootDisabled:  "secure_boot_disabled",
		firmware.Reason(99):                "Reason(99)",
	} {
		if got := r.String(); got != want {
			t.Errorf("Reason(%d).String() = %q, want %q", int(r), got, want)
		}
	}
}

func TestEvaluate(t *testing.T) {
	ref := defaultReference(t)
	on := replay(t, elt.New(nil))
	off := replay(t, elt.New(&elt.Options{SecureBootDisabled: true}))
	for _, tc := range []struct {
		name   string
		policy firmware.Policy
		m      *firmware.Measurements
		want   firmware.Reason // 0: accepted
	}{
		{"approved, secure boot required and on", firmware.Policy{Approved: []firmware.Reference{ref}, RequireSecureBoot: true}, on, 0},
		{"approved, secure boot off and not required", firmware.Policy{Approved: []firmware.Reference{ref}}, off, 0},
		{"digest in upper case", firmware.Policy{Approved: []firmware.Reference{{Name: "x", FirmwareDigest: strings.ToUpper(ref.FirmwareDigest)}}}, on, 0},
		{"nothing approved", firmware.Policy{}, on, firmware.ReasonFirmwareNotApproved},
		{"other firmware approved", firmware.Policy{Approved: []firmware.Reference{{Name: "x", FirmwareDigest: strings.Repeat("ab", 32)}}}, on, firmware.ReasonFirmwareNotApproved},
		{"secure boot required and off", firmware.Policy{Approved: []firmware.Reference{ref}, RequireSecureBoot: true}, off, firmware.ReasonSecureBootDisabled},
		{"required PCR not replayed", firmware.Policy{Approved: []firmware.Reference{ref}, RequiredPCRs: []int{9}}, on, firmware.ReasonPCRNotQuoted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.policy.Evaluate(tc.m)
			if tc.want == 0 {
				if err != nil {
					t.Fatalf("Evaluate: %v", err)
				}
				return
			}
			wantReason(t, err, tc.want, true)
		})
	}
}

func TestEvaluateFaults(t *testing.T) {
	ref := defaultReference(t)
	good := firmware.Policy{Approved: []firmware.Reference{ref}}
	if err := good.Evaluate(&firmware.Measurements{}); !errors.Is(err, firmware.ErrNotReplayed) || firmware.ReasonOf(err) != 0 {
		t.Errorf("zero Measurements: error = %v, want ErrNotReplayed", err)
	}
	if err := good.Evaluate(nil); !errors.Is(err, firmware.ErrNotReplayed) {
		t.Errorf("nil Measurements: error = %v, want ErrNotReplayed", err)
	}
	if _, err := firmware.NewReference("x", &firmware.Measurements{}); !errors.Is(err, firmware.ErrNotReplayed) {
		t.Errorf("NewReference of zero Measurements: error = %v, want ErrNotReplayed", err)
	}
	bad := firmware.Policy{Approved: []firmware.Reference{{Name: "x", FirmwareDigest: "zz"}}}
	if err := bad.Evaluate(replay(t, elt.New(nil))); !errors.Is(err, firmware.ErrInvalidPolicy) || firmware.ReasonOf(err) != 0 {
		t.Errorf("invalid policy: error = %v, want ErrInvalidPolicy", err)
	}
}

func TestPolicyValidate(t *testing.T) {
	ref := defaultReference(t)
	if err := (firmware.Policy{Approved: []firmware.Reference{ref}, RequiredPCRs: []int{8, 14}}).Validate(); err != nil {
		t.Fatalf("valid policy: %v", err)
	}
	if err := (firmware.Policy{}).Validate(); err != nil {
		t.Fatalf("zero policy: %v", err)
	}
	p := firmware.Policy{
		Approved: []firmware.Reference{
			{Name: "", FirmwareDigest: ref.FirmwareDigest},
			{Name: "short", FirmwareDigest: "abcd"},
			{Name: "dup", FirmwareDigest: ref.FirmwareDigest},
			{Name: "dup", FirmwareDigest: ref.FirmwareDigest},
		},
		RequiredPCRs: []int{24, 8, 8},
	}
	err := p.Validate()
	if !errors.Is(err, firmware.ErrInvalidPolicy) {
		t.Fatalf("error = %v, want ErrInvalidPolicy", err)
	}
	// Every problem is reported at once.
	for _, want := range []string{"reference name of 0 bytes", `"short"`, `"dup" used twice`, "PCR 24 out of range", "PCR 8 listed twice"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
