package enrollserver_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/pki/stepca"
	"github.com/edgeenroll/edgeenroll/pki/stepca/stepcatest"
)

// newStepCAIssuer is a step-ca issuer for sca's JWK provisioner, or its
// X5C provisioner with x5c.
func newStepCAIssuer(t *testing.T, sca *stepcatest.CA, x5c bool) *stepca.Issuer {
	t.Helper()
	opts := stepca.Options{URL: sca.URL, Roots: sca.RootPEM(), Provisioner: sca.Provisioner, Key: sca.Key, Timeout: 2 * time.Second}
	if x5c {
		opts.Provisioner, opts.Key, opts.X5C = sca.X5CProvisioner, nil, &stepca.X5CCredential{Chain: sca.X5CChain, Key: sca.X5CKey}
	}
	iss, err := stepca.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iss.Close)
	return iss
}

// enroll runs begin and finish for d and returns its leaf. The CSR names
// the device, as the agent's does and step-ca requires.
func (e *env) enroll(d *device) *x509.Certificate {
	e.t.Helper()
	br := e.begin(d)
	req := d.finish(br, br.Nonce)
	key, err := d.tpm.LoadKey(d.keyBlob)
	if err != nil {
		e.t.Fatal(err)
	}
	priv, err := key.Private(key.Public())
	if err != nil {
		e.t.Fatal(err)
	}
	req.CSR, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: deviceID(d.ekDER)}}, priv.(crypto.Signer))
	key.Close()
	if err != nil {
		e.t.Fatal(err)
	}
	var fr api.FinishResponse
	if err := e.post(api.PathFinish, req, &fr); err != nil {
		e.t.Fatalf("finish: %v", err)
	}
	leaf, err := x509.ParseCertificate(fr.CertificateChain[0])
	if err != nil {
		e.t.Fatal(err)
	}
	return leaf
}

// logRecords collects log records at warn and above.
type logRecords struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logRecords) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = append(l.recs, r.Clone())
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// find returns the attributes of the records with msg prefix.
func (l *logRecords) find(prefix string) []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]string
	for _, r := range l.recs {
		if strings.HasPrefix(r.Message, prefix) {
			m := map[string]string{"level": r.Level.String()}
			r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
			out = append(out, m)
		}
	}
	return out
}

// An operator's revoke reaches the step-ca that issued the certificate:
// step-ca lists it on its CRL (and refuses to renew it; see pki/stepca's
// TestRevoke), while a device not revoked stays off it.
func TestRevocationReachesStepCA(t *testing.T) {
	sca := stepcatest.Start(t, nil)
	iss := newStepCAIssuer(t, sca, false)
	e := newEnv(t, func(c *enrollserver.Config) { c.Issuer = iss })
	d := newDevice(t, e.mfr)
	leaf := e.enroll(d)
	if !slices.ContainsFunc(leaf.Extensions, func(x pkix.Extension) bool { return x.Id.String() == "1.3.6.1.4.1.37476.9000.64.1" }) {
		t.Fatal("the device certificate is not from step-ca")
	}
	serial := leaf.SerialNumber.Text(16)
	if slices.Contains(sca.RevokedSerials(t), serial) {
		t.Fatal("revoked before the revoke")
	}
	start := time.Now()
	resp := e.act(api.ActionRevoke, &api.DeviceActionRequest{DeviceIDs: []string{deviceID(d.ekDER)}, Reason: "stolen", ReasonCode: "key-compromise"})
	t.Logf("revoke with the forward to step-ca took %s", time.Since(start).Round(time.Millisecond))
	if got := resp.Results[0].RevokedCertificates; len(got) != 1 || got[0] != serial {
		t.Fatalf("revoke = %+v", resp)
	}
	if !slices.Contains(sca.RevokedSerials(t), serial) {
		t.Errorf("serial %s is not on step-ca's CRL after the revoke", serial)
	}
}

// A forward that fails while step-ca is down is logged, the revoke itself
// succeeds, and the reconcile pass forwards it once step-ca is back. A
// forwarder of a restarted enrolld forwards it again, harmlessly.
func TestRevocationForwardRetried(t *testing.T) {
	sca := stepcatest.Start(t, nil)
	iss := newStepCAIssuer(t, sca, true)
	logs := &logRecords{}
	e := newEnv(t, func(c *enrollserver.Config) { c.Issuer, c.Logger = iss, slog.New(logs) })
	d := newDevice(t, e.mfr)
	id := deviceID(d.ekDER)
	serial := e.enroll(d).SerialNumber.Text(16)
	fw, err := enrollserver.NewRevocationForwarder(enrollserver.RevocationForwarderConfig{Store: e.store, CA: e.ca, Revoker: iss, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	sca.Stop()
	resp := e.act(api.ActionRevoke, &api.DeviceActionRequest{DeviceIDs: []string{id}, Reason: "stolen"})
	if r := resp.Results[0]; r.Outcome != api.OutcomeChanged || len(r.RevokedCertificates) != 1 {
		t.Fatalf("revoke with step-ca down = %+v; want it recorded anyway", r)
	}
	if w := logs.find("forwarding revocation"); len(w) != 1 || w[0]["serial"] != serial || w[0]["level"] != "WARN" {
		t.Errorf("warnings = %v; want one naming serial %s", w, serial)
	}
	// A pass while it is still down: pending, counted per serial.
	for attempt := 1; attempt <= 2; attempt++ {
		res, err := fw.Reconcile(ctx)
		if err != nil || res.Pending != 1 || res.Forwarded != 0 {
			t.Fatalf("reconcile with step-ca down = %+v, %v; want 1 pending", res, err)
		}
	}
	w := logs.find("forwarding revocation")
	if last := w[len(w)-1]; last["serial"] != serial || last["attempts"] != "2" {
		t.Errorf("last warning = %v; want serial %s, attempts 2", last, serial)
	}

	sca.Restart(t)
	if slices.Contains(sca.RevokedSerials(t), serial) {
		t.Fatal("step-ca had the revocation before the reconcile")
	}
	res, err := fw.Reconcile(ctx)
	if err != nil || res.Forwarded != 1 || res.Pending != 0 {
		t.Fatalf("reconcile with step-ca back = %+v, %v; want 1 forwarded", res, err)
	}
	if !slices.Contains(sca.RevokedSerials(t), serial) {
		t.Fatalf("serial %s is not on step-ca's CRL after the reconcile", serial)
	}
	if res, err := fw.Reconcile(ctx); err != nil || res != (enrollserver.ReconcileResult{}) {
		t.Errorf("second reconcile = %+v, %v; want nothing left to do", res, err)
	}
	// enrolld restarted: a new forwarder forwards it once more; step-ca
	// answers "already revoked", which is success.
	fresh, err := enrollserver.NewRevocationForwarder(enrollserver.RevocationForwarderConfig{Store: e.store, CA: e.ca, Revoker: iss})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := fresh.Reconcile(ctx); err != nil || res.Forwarded != 1 {
		t.Errorf("reconcile after a restart = %+v, %v; want the revocation forwarded (again)", res, err)
	}
}

// fakeRevoker records Revoke calls and fails those in fail.
type fakeRevoker struct {
	mu    sync.Mutex
	calls []string
	fail  map[string]error
}

func (f *fakeRevoker) Revoke(_ context.Context, serial string, _ int, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, serial)
	return f.fail[serial]
}

// Which revocations are forwarded: not the embedded CA's current
// certificate (provably its own), but an older certificate whose chain is
// not kept; nothing expired. Failures are retried.
func TestRevocationForwardSelection(t *testing.T) {
	e := newEnv(t) // the embedded CA issues
	d := newDevice(t, e.mfr)
	id := deviceID(d.ekDER)
	older := []string{e.enroll(d).SerialNumber.Text(16), e.enroll(d).SerialNumber.Text(16)}
	current := e.enroll(d)
	e.act(api.ActionRevoke, &api.DeviceActionRequest{DeviceIDs: []string{id}, Reason: "stolen"})
	newForwarder := func(rev pki.Revoker, now func() time.Time) *enrollserver.RevocationForwarder {
		fw, err := enrollserver.NewRevocationForwarder(enrollserver.RevocationForwarderConfig{Store: e.store, CA: e.ca, Revoker: rev, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return fw
	}

	rev := &fakeRevoker{}
	res, err := newForwarder(rev, e.clock).Reconcile(context.Background())
	slices.Sort(rev.calls)
	slices.Sort(older)
	if err != nil || res.Forwarded != 2 || res.EmbeddedCA != 1 || !slices.Equal(rev.calls, older) {
		t.Fatalf("reconcile = %+v, %v, calls %v; want only the older certificates %v forwarded", res, err, rev.calls, older)
	}

	// Expired certificates are not forwarded.
	rev = &fakeRevoker{}
	expired := newForwarder(rev, func() time.Time { return current.NotAfter.Add(time.Minute) })
	if res, err := expired.Reconcile(context.Background()); err != nil || res != (enrollserver.ReconcileResult{}) || len(rev.calls) != 0 {
		t.Errorf("reconcile after expiry = %+v, %v, calls %v; want nothing", res, err, rev.calls)
	}

	t.Run("a refusal is retried and holds up nothing else", func(t *testing.T) {
		rev := &fakeRevoker{fail: map[string]error{older[0]: errors.New("refused")}}
		fw := newForwarder(rev, e.clock)
		if res, err := fw.Reconcile(context.Background()); err != nil || res.Forwarded != 1 || res.Pending != 1 || len(rev.calls) != 2 {
			t.Fatalf("first pass = %+v, %v, calls %v; want one forwarded, one pending", res, err, rev.calls)
		}
		if res, err := fw.Reconcile(context.Background()); err != nil || res.Forwarded != 0 || res.Pending != 1 || len(rev.calls) != 3 || rev.calls[2] != older[0] {
			t.Fatalf("second pass = %+v, %v, calls %v; want only the refused one again", res, err, rev.calls)
		}
	})
	t.Run("a forward the server made is not repeated", func(t *testing.T) {
		rev := &fakeRevoker{fail: map[string]error{older[1]: pki.ErrRevokerUnavailable}}
		fw := newForwarder(rev, e.clock)
		ctx := context.Background()
		if err := fw.Revoke(ctx, older[0], 0, "stolen"); err != nil {
			t.Fatal(err)
		}
		if err := fw.Revoke(ctx, older[1], 0, "stolen"); !errors.Is(err, pki.ErrRevokerUnavailable) {
			t.Fatalf("Revoke of a serial the CA refused = %v", err)
		}
		rev.mu.Lock()
		delete(rev.fail, older[1]) // the CA is back
		rev.mu.Unlock()
		res, err := fw.Reconcile(ctx)
		if err != nil || res.Forwarded != 1 || len(rev.calls) != 3 || rev.calls[2] != older[1] {
			t.Fatalf("pass = %+v, %v, calls %v; want only %s, which was not acknowledged, sent again", res, err, rev.calls, older[1])
		}
	})
	t.Run("an unavailable CA stops the pass", func(t *testing.T) {
		rev := &fakeRevoker{fail: map[string]error{older[0]: pki.ErrRevokerUnavailable, older[1]: pki.ErrRevokerUnavailable}}
		fw := newForwarder(rev, e.clock)
		for pass := 1; pass <= 2; pass++ {
			if res, err := fw.Reconcile(context.Background()); err != nil || res.Forwarded != 0 || res.Pending < 2 || len(rev.calls) != pass {
				t.Fatalf("pass %d = %+v, %v, calls %v; want one call per pass, both pending", pass, res, err, rev.calls)
			}
		}
	})
}

// Without a Revoker (the embedded CA issues) a revoke forwards nothing and
// logs no warning.
func TestRevocationWithoutRevoker(t *testing.T) {
	logs := &logRecords{}
	e := newEnv(t, func(c *enrollserver.Config) { c.Logger = slog.New(logs) })
	d := newDevice(t, e.mfr)
	e.enroll(d)
	e.act(api.ActionRevoke, &api.DeviceActionRequest{DeviceIDs: []string{deviceID(d.ekDER)}, Reason: "stolen"})
	if w := logs.find("forwarding revocation"); len(w) != 0 {
		t.Errorf("warnings = %v", w)
	}
}
