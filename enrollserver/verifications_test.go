package enrollserver_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// wantVerdictLookups checks edgeenroll_verdict_memo_lookups_total, given as
// "step/result" → count; series not given must be absent.
func wantVerdictLookups(t *testing.T, e *env, want map[string]float64) {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "edgeenroll_verdict_memo_lookups_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			got[l["step"]+"/"+l["result"]] = m.GetCounter().GetValue()
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("verdict memo lookups (-want +got):\n%s", diff)
	}
}

// TestVerdictMemo: a device attesting again with the same EK certificate
// and AK is not verified twice, still has to activate a fresh challenge,
// and evidence that differs in one bit, or a remembered EK verdict past
// its certificate's validity, is verified in full and refused.
func TestVerdictMemo(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, nil)
	ekCert, err := e.mfr.IssueEKCertificateWithOptions(d.ek.Public, &tpmsim.EKCertificateOptions{NotAfter: time.Now().Add(2 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	d.ekCert = ekCert

	enroll := func() {
		t.Helper()
		br := e.begin(d)
		var fr api.FinishResponse
		if err := e.post(api.PathFinish, d.finish(br, br.Nonce), &fr); err != nil {
			t.Fatalf("finish: %v", err)
		}
	}
	enroll()
	wantVerdictLookups(t, e, map[string]float64{"ak_creation/miss": 1, "ek_certificate/miss": 1})
	// The renewal: both verdicts remembered, and the challenge made from
	// the remembered AK is one the TPM activates.
	enroll()
	wantVerdictLookups(t, e, map[string]float64{"ak_creation/hit": 1, "ek_certificate/hit": 1, "ak_creation/miss": 1, "ek_certificate/miss": 1})

	// The remembered AK's creation signature with one bit changed.
	req := d.begin()
	req.AK.CreateSignature = bytes.Clone(req.AK.CreateSignature)
	req.AK.CreateSignature[len(req.AK.CreateSignature)-1] ^= 1
	var br api.BeginResponse
	wantCode(t, e.post(api.PathBegin, req, &br), api.CodeAKInvalid)
	// The remembered EK certificate with one bit changed (its signature).
	req = d.begin()
	req.EKCertificate = bytes.Clone(req.EKCertificate)
	req.EKCertificate[len(req.EKCertificate)-1] ^= 1
	wantCode(t, e.post(api.PathBegin, req, &br), api.CodeEKUntrusted)
	wantVerdictLookups(t, e, map[string]float64{"ak_creation/hit": 1, "ek_certificate/hit": 2, "ak_creation/miss": 2, "ek_certificate/miss": 2})

	// Three hours on, the EK certificate has expired: its remembered
	// verdict is not used, and the device is refused.
	e.advance(3 * time.Hour)
	wantCode(t, e.post(api.PathBegin, d.begin(), &br), api.CodeEKUntrusted)
	wantVerdictLookups(t, e, map[string]float64{"ak_creation/hit": 1, "ek_certificate/hit": 2, "ak_creation/miss": 2, "ek_certificate/miss": 3})
}

// TestVerdictMemoOff: a negative VerdictMemoSize remembers nothing.
func TestVerdictMemoOff(t *testing.T) {
	e := newEnv(t, func(c *enrollserver.Config) { c.VerdictMemoSize = -1 })
	d := newDevice(t, e.mfr)
	e.begin(d)
	e.begin(d)
	wantVerdictLookups(t, e, map[string]float64{"ak_creation/miss": 2, "ek_certificate/miss": 2})
}
