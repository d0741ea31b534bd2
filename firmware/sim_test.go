package firmware_test

import (
	"bytes"
	"crypto/rand"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/attest"
	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

// bootAndQuote plays a device on the simulated TPM: reboot, measure the
// boot (extend the log's digests, hand the log to the TPM's measurement-log
// seam), quote pcrs over a fresh nonce with a new ECDSA AK, then run after(l)
// (measurements after the quote). It returns the log as the device sends it
// and the PCR values attest.VerifyQuote proved, as the server holds them.
func bootAndQuote(t *testing.T, l *elt.Log, pcrs []int, after func(*elt.Log)) ([]byte, map[int][]byte) {
	t.Helper()
	s := needTPM(t)
	if err := s.Reset(); err != nil {
		t.Fatalf("resetting the TPM: %v", err)
	}
	if err := l.ExtendTPM(s); err != nil {
		t.Fatal(err)
	}
	tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: s})
	if err != nil {
		t.Fatalf("OpenTPM: %v", err)
	}
	ak, err := tpm.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
	if err != nil {
		t.Fatalf("NewAK: %v", err)
	}
	defer func() {
		if err := ak.Close(tpm); err != nil {
			t.Errorf("closing AK: %v", err)
		}
	}()
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	q, err := ak.QuotePCRs(tpm, nonce, goattest.HashSHA256, pcrs)
	if err != nil {
		t.Fatalf("QuotePCRs: %v", err)
	}
	all, err := tpm.PCRs(goattest.HashSHA256)
	if err != nil {
		t.Fatalf("reading PCRs: %v", err)
	}
	reported := map[int][]byte{}
	for _, i := range pcrs {
		reported[i] = bytes.Clone(all[i].Digest)
	}
	if after != nil {
		n := len(l.Events)
		after(l)
		if err := (&elt.Log{Events: l.Events[n:], SHA1: l.SHA1}).ExtendTPM(s); err != nil {
			t.Fatal(err)
		}
	}
	s.SetMeasurementLog(l.Bytes())
	logBytes, err := tpm.MeasurementLog()
	if err != nil {
		t.Fatalf("MeasurementLog: %v", err)
	}

	// Server side: the AK's parameters, then the quote.
	akPub, err := attest.VerifyAKParameters(ak.AttestationParameters())
	if err != nil {
		t.Fatalf("VerifyAKParameters: %v", err)
	}
	verified, err := attest.VerifyQuote(akPub, q.Quote, q.Signature, reported, nonce, pcrs)
	if err != nil {
		t.Fatalf("VerifyQuote: %v", err)
	}
	return logBytes, verified
}

// TestSimulatedTPM runs measured boot end to end on the simulated TPM: the
// generator's digests are extended into real PCRs, a real AK quotes them,
// attest.VerifyQuote verifies the quote, and only then is the log replayed
// against the verified values and judged.
func TestSimulatedTPM(t *testing.T) {
	needTPM(t)
	firmwarePCRs := []int{0, 1, 2, 3, 4, 5, 6, 7}
	ref := defaultReference(t)
	policy := firmware.Policy{Approved: []firmware.Reference{ref}, RequireSecureBoot: true}

	for _, tc := range []struct {
		name   string
		opts   *elt.Options
		pcrs   []int
		after  func(*elt.Log)
		want   firmware.Reason
		policy bool
	}{
		{name: "approved firmware, secure boot on", pcrs: firmwarePCRs},
		{name: "both banks extended", opts: &elt.Options{SHA1: true}, pcrs: []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 23}},
		{
			name:   "secure boot off",
			opts:   &elt.Options{SecureBootDisabled: true},
			pcrs:   firmwarePCRs,
			want:   firmware.ReasonSecureBootDisabled,
			policy: true,
		},
		{
			name:   "unapproved firmware",
			opts:   &elt.Options{FirmwareVersion: "EdgeEnroll Test Firmware 0.9"},
			pcrs:   firmwarePCRs,
			want:   firmware.ReasonFirmwareNotApproved,
			policy: true,
		},
		{
			name: "event measured after the quote",
			pcrs: firmwarePCRs,
			after: func(l *elt.Log) {
				l.Events = append(l.Events, elt.NewMeasurement(4, elt.EV_EFI_BOOT_SERVICES_APPLICATION, nil, []byte("late image")))
			},
			want: firmware.ReasonEventLogMismatch,
		},
		{
			name: "PCR 7 left out of the quote",
			pcrs: []int{0, 1, 2, 3, 4, 5, 6},
			want: firmware.ReasonPCRNotQuoted,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logBytes, verified := bootAndQuote(t, elt.New(tc.opts), tc.pcrs, tc.after)
			err := func() error {
				lg, err := firmware.ParseMeasurements(logBytes)
				if err != nil {
					return err
				}
				m, err := lg.Replay(verified, policy.RequiredPCRs)
				if err != nil {
					return err
				}
				if err := policy.Evaluate(m); err != nil {
					return err
				}
				if m.FirmwareDigest() != ref.FirmwareDigest {
					t.Errorf("FirmwareDigest = %s, want %s", m.FirmwareDigest(), ref.FirmwareDigest)
				}
				return nil
			}()
			if tc.want == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			wantReason(t, err, tc.want, tc.policy)
		})
	}
}
