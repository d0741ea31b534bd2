package enrollserver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
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

// TestVerdictMemoKeyCoversEveryInput: once a device's verdicts are
// remembered, evidence that differs in any one input the verifications read
// is verified in full, and refused when it does not hold: a genuine EK
// certificate (public data) with another EK, another public area under the
// remembered AK creation blobs (a key that is not restricted), and each
// creation blob altered.
func TestVerdictMemoKeyCoversEveryInput(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, e.mfr)
	e.begin(d)
	key, err := d.tpm.LoadKey(d.keyBlob)
	if err != nil {
		t.Fatal(err)
	}
	notRestricted := key.CertificationParameters().Public
	key.Close()
	attacker, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherEK, err := x509.MarshalPKIXPublicKey(&attacker.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 1
		return b
	}
	flipLast := func(b []byte) []byte { return flip(b, len(b)-1) }
	tests := []struct {
		name   string
		change func(*api.BeginRequest)
		want   api.Code
	}{
		{"EK certificate", func(r *api.BeginRequest) { r.EKCertificate = flipLast(r.EKCertificate) }, api.CodeEKUntrusted},
		{"another EK", func(r *api.BeginRequest) { r.EKPublic = otherEK }, api.CodeEKUntrusted},
		{"AK public area", func(r *api.BeginRequest) { r.AK.Public = notRestricted }, api.CodeAKInvalid},
		// A byte of the PCR digest: the creation hash no longer matches.
		{"AK creation data", func(r *api.BeginRequest) { r.AK.CreateData = flip(r.AK.CreateData, 20) }, api.CodeAKInvalid},
		// A byte of the attested name: it no longer names this key.
		{"AK creation attestation", func(r *api.BeginRequest) { r.AK.CreateAttestation = flipLast(r.AK.CreateAttestation) }, api.CodeAKInvalid},
		{"AK creation signature", func(r *api.BeginRequest) { r.AK.CreateSignature = flipLast(r.AK.CreateSignature) }, api.CodeAKInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := d.begin()
			tc.change(req)
			var br api.BeginResponse
			err := e.post(api.PathBegin, req, &br)
			wantCode(t, err, tc.want)
		})
	}
	// The unchanged evidence still enrolls, from the remembered verdicts.
	br := e.begin(d)
	var fr api.FinishResponse
	if err := e.post(api.PathFinish, d.finish(br, br.Nonce), &fr); err != nil {
		t.Fatalf("finish: %v", err)
	}
}

// TestVerdictMemoConcurrent: begins sharing remembered verdicts at once
// (run with -race).
func TestVerdictMemoConcurrent(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, e.mfr)
	e.begin(d)
	errs := make(chan error, 8)
	for range 8 {
		req := d.begin()
		go func() {
			var br api.BeginResponse
			errs <- e.post(api.PathBegin, req, &br)
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestSealedSessionFinishedOnlySealed: a session begun over a transport
// that seals its answer (MQTT) is not finished over HTTPS, where the
// answer would travel unsealed to whoever relayed the request; over its
// own transport it is.
func TestSealedSessionFinishedOnlySealed(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, e.mfr)
	br, err := e.srv.BeginSealed(context.Background(), "sealed", d.begin())
	if err != nil {
		t.Fatal(err)
	}
	req := d.finish(br, br.Nonce)
	var fr api.FinishResponse
	wantCode(t, e.post(api.PathFinish, req, &fr), api.CodeNonceUnknownOrUsed)
	if _, err := e.srv.FinishSealed(context.Background(), "sealed", req); err != nil {
		t.Fatalf("finish over the sealing transport: %v", err)
	}
	// Nor is its answer repeated over HTTPS afterwards.
	wantCode(t, e.post(api.PathFinish, req, &fr), api.CodeNonceUnknownOrUsed)
}

// TestBeginBudgetPerDevice: begins replayed for one device (its EK
// certificate is public) are held to the device's own budget, so they
// cannot fill the live-session table.
func TestBeginBudgetPerDevice(t *testing.T) {
	e := newEnvAdmission(t, admission.Options{})
	d := newDevice(t, e.mfr)
	req := d.begin()
	busy := 0
	for range admission.DefaultDeviceBurst + 5 {
		var br api.BeginResponse
		if err := e.post(api.PathBegin, req, &br); err != nil {
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Code != api.CodeBusy || ae.RetryAfterSeconds < 1 {
				t.Fatalf("begin: %v, want busy with a Retry-After", err)
			}
			busy++
		}
	}
	if busy < 4 {
		t.Errorf("%d of %d rapid begins for one device refused busy, want at least 4", busy, admission.DefaultDeviceBurst+5)
	}
}
