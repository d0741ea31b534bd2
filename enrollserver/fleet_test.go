package enrollserver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

var opCall = &enrollserver.Call{CorrelationID: "test-op", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "alice", Role: pki.RoleOperator}}

// stranger is a begin request for an EK of no TPM we know: enough to test
// admission, which decides before the challenge.
func stranger(t *testing.T, d *device) (*api.BeginRequest, string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	req := d.begin()
	req.EKPublic, req.EKCertificate = der, nil
	return req, deviceID(der)
}

func (e *env) audit(action, target string) []*store.AuditRecord {
	e.t.Helper()
	var out []*store.AuditRecord
	if err := e.store.AuditLog(context.Background(), 0, func(r *store.AuditRecord) bool {
		if r.Action == action && (target == "" || r.Target == target) {
			out = append(out, r)
		}
		return true
	}); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) act(action api.DeviceAction, req *api.DeviceActionRequest) *api.DeviceActionResponse {
	e.t.Helper()
	resp, err := e.srv.DeviceAction(context.Background(), opCall, action, req)
	if err != nil {
		e.t.Fatalf("%s: %v", action, err)
	}
	return resp
}

func wantAPICode(t *testing.T, err error, code api.Code) *api.Error {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != code {
		t.Fatalf("got %v, want %s", err, code)
	}
	return ae
}

// TestAdmissionPolicy walks the admission rules: closed and open mode,
// group policies, pending records with Retry-After, the pending cap and
// expiry, approval and denial.
func TestAdmissionPolicy(t *testing.T) {
	ctx := context.Background()

	t.Run("closed mode leaves no record of a stranger", func(t *testing.T) {
		e := newEnv(t)
		req, id := stranger(t, newDevice(t, nil))
		var br api.BeginResponse
		wantCode(t, e.post(api.PathBegin, req, &br), api.CodeNotRegistered)
		if _, err := e.store.Device(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("stranger left a record: %v", err)
		}
	})

	t.Run("open mode: strangers wait, capped, and expire", func(t *testing.T) {
		e := newEnv(t, func(c *enrollserver.Config) {
			c.OpenMode, c.MaxPending, c.PendingRetryAfter, c.PendingTTL = true, 2, 3*time.Second, time.Hour
		})
		d := newDevice(t, nil)
		var ids []string
		for range 2 {
			req, id := stranger(t, d)
			var br api.BeginResponse
			err := e.post(api.PathBegin, req, &br)
			wantCode(t, err, api.CodePendingApproval)
			if ae := err.(*api.Error); ae.RetryAfterSeconds != 3 {
				t.Errorf("retry after %d s, want 3", ae.RetryAfterSeconds)
			}
			// Asking again refreshes the record without a new audit record.
			wantCode(t, e.post(api.PathBegin, req, &br), api.CodePendingApproval)
			ids = append(ids, id)
		}
		req, _ := stranger(t, d)
		var br api.BeginResponse
		if ae := wantAPICode(t, e.post(api.PathBegin, req, &br), api.CodeBusy); ae.RetryAfterSeconds != 3 {
			t.Errorf("busy retry after %d", ae.RetryAfterSeconds)
		}
		for _, id := range ids {
			if n := len(e.audit("device.pending", id)); n != 1 {
				t.Errorf("%d device.pending records for %s, want 1", n, id)
			}
		}
		e.advance(2 * time.Hour)
		if _, pending, _, err := e.srv.PurgeExpired(ctx); err != nil || pending != 2 {
			t.Fatalf("purge = %d, %v", pending, err)
		}
		if n := len(e.audit("device.pending_expired", "")); n != 2 {
			t.Errorf("%d expiry records, want 2", n)
		}
		wantCode(t, e.post(api.PathBegin, req, &br), api.CodePendingApproval) // room again
	})

	t.Run("manual group: pending until approved", func(t *testing.T) {
		e := newEnv(t)
		d := newDevice(t, e.mfr) // EK certificate: default group
		if _, err := e.srv.SetGroup(ctx, opCall, "default", &api.GroupSpec{Admission: api.AdmissionManual, CertLifetimeSeconds: 3600}); err != nil {
			t.Fatal(err)
		}
		var br api.BeginResponse
		wantCode(t, e.post(api.PathBegin, d.begin(), &br), api.CodePendingApproval)
		id := deviceID(d.ekDER)
		var l *api.DeviceList
		l, err := e.srv.ListDevices(ctx, enrollserver.DeviceQuery{Status: api.StatusPending})
		if err != nil || len(l.Devices) != 1 || l.Devices[0].DeviceID != id {
			t.Fatalf("pending list = %+v, %v", l, err)
		}
		// A selector approves it.
		resp := e.act(api.ActionApprove, &api.DeviceActionRequest{Group: "default"})
		if len(resp.Results) != 1 || resp.Results[0].Outcome != api.OutcomeChanged {
			t.Fatalf("approve = %+v", resp)
		}
		b := e.begin(d)
		var fr api.FinishResponse
		if err := e.post(api.PathFinish, d.finish(b, b.Nonce), &fr); err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(fr.CertificateChain[0])
		if life := leaf.NotAfter.Sub(leaf.NotBefore); life > time.Hour+2*time.Minute {
			t.Errorf("certificate lives %s, want the group's 1h", life)
		}
		// Enrolled: renewals proceed though the group is manual.
		e.begin(d)
	})

	t.Run("deny group and denied device", func(t *testing.T) {
		e := newEnv(t)
		d := newDevice(t, e.mfr)
		e.srv.SetGroup(ctx, opCall, "default", &api.GroupSpec{Admission: api.AdmissionDeny})
		var br api.BeginResponse
		wantCode(t, e.post(api.PathBegin, d.begin(), &br), api.CodeDenied)
		if _, err := e.store.Device(ctx, deviceID(d.ekDER)); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deny group left a record: %v", err)
		}
		e.srv.SetGroup(ctx, opCall, "default", &api.GroupSpec{Admission: api.AdmissionManual})
		wantCode(t, e.post(api.PathBegin, d.begin(), &br), api.CodePendingApproval)
		e.act(api.ActionDeny, &api.DeviceActionRequest{DeviceIDs: []string{deviceID(d.ekDER)}, Reason: "not ours"})
		wantCode(t, e.post(api.PathBegin, d.begin(), &br), api.CodeDenied)
		// approve does not undo a denial; readmit does.
		if r := e.act(api.ActionApprove, &api.DeviceActionRequest{DeviceIDs: []string{deviceID(d.ekDER)}}); r.Results[0].Code != api.CodeConflict {
			t.Errorf("approve of a denied device = %+v", r)
		}
		e.act(api.ActionReadmit, &api.DeviceActionRequest{DeviceIDs: []string{deviceID(d.ekDER)}})
		e.begin(d)
	})
}

// TestRevocation: revoking during an enrollment refuses its finish; the
// device's certificates go on the CRL; whoami and renewal are refused.
func TestRevocation(t *testing.T) {
	ctx := context.Background()
	var crls [][]byte
	e := newEnv(t, func(c *enrollserver.Config) {
		c.OnCRL = func(all [][]byte) error { crls = append(crls, all[0]); return nil }
	})
	d := newDevice(t, e.mfr)
	id := deviceID(d.ekDER)
	br := e.begin(d)
	var fr api.FinishResponse
	if err := e.post(api.PathFinish, d.finish(br, br.Nonce), &fr); err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(fr.CertificateChain[0])

	br2 := e.begin(d) // a renewal in flight ...
	resp := e.act(api.ActionRevoke, &api.DeviceActionRequest{DeviceIDs: []string{id}, Reason: "stolen", ReasonCode: "key-compromise"})
	if got := resp.Results[0].RevokedCertificates; len(got) != 1 || got[0] != leaf.SerialNumber.Text(16) {
		t.Fatalf("revoke = %+v", resp)
	}
	wantCode(t, e.post(api.PathFinish, d.finish(br2, br2.Nonce), &fr), api.CodeRevoked) // ... is refused at finish
	var b api.BeginResponse
	wantCode(t, e.post(api.PathBegin, d.begin(), &b), api.CodeRevoked)

	if len(crls) != 1 {
		t.Fatalf("%d CRLs published, want 1", len(crls))
	}
	crl, err := x509.ParseRevocationList(crls[0])
	if err != nil || crl.CheckSignatureFrom(e.ca.Intermediate()) != nil {
		t.Fatalf("crl: %v", err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 ||
		crl.RevokedCertificateEntries[0].ReasonCode != pki.ReasonKeyCompromise {
		t.Errorf("crl entries = %+v", crl.RevokedCertificateEntries)
	}
	if _, err := e.srv.Whoami(ctx, leaf); err == nil {
		t.Error("whoami accepted a revoked certificate")
	} else {
		wantAPICode(t, err, api.CodeRevoked)
	}
	// The refused finish issued nothing and the audit log has one revoke.
	if n := len(e.audit("device.revoke", id)); n != 1 {
		t.Errorf("%d revoke records", n)
	}
	if n := len(e.audit("certificate.issue", id)) + len(e.audit("certificate.renew", id)); n != 1 {
		t.Errorf("%d issuance records, want 1", n)
	}
	if r := e.act(api.ActionRevoke, &api.DeviceActionRequest{DeviceIDs: []string{id}, Reason: "again"}); r.Results[0].Outcome != api.OutcomeUnchanged {
		t.Errorf("second revoke = %+v", r)
	}

	// RFC 5280 5.3: the entry stays on the first CRL issued after the
	// certificate expired, and leaves after a CRL lifetime.
	entries := func() int {
		der, err := e.srv.RefreshCRL(ctx)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		return len(c.RevokedCertificateEntries)
	}
	e.advance(leaf.NotAfter.Sub(e.clock()) + time.Minute)
	if n := entries(); n != 1 {
		t.Errorf("just after the certificate expired: %d CRL entries, want 1", n)
	}
	e.advance(enrollserver.DefaultCRLLifetime)
	if n := entries(); n != 0 {
		t.Errorf("a CRL lifetime after it expired: %d CRL entries, want 0", n)
	}
}

// TestAdminRefusalsAudited: refusals of any kind of caller are audited
// with who tried what.
func TestAdminRefusalsAudited(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, e.mfr)
	br := e.begin(d)
	var fr api.FinishResponse
	if err := e.post(api.PathFinish, d.finish(br, br.Nonce), &fr); err != nil {
		t.Fatal(err)
	}
	key, err := d.tpm.LoadKey(d.keyBlob)
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	priv, _ := key.Private(key.Public())
	deviceCert := &tls.Certificate{Certificate: fr.CertificateChain, PrivateKey: priv}
	viewer, _ := e.ca.IssueOperator(pki.RoleViewer, "vic", 0)
	factory, _ := e.ca.IssueOperator(pki.RoleFactory, "fred", 0)

	post := func(c *http.Client, path, body string) int {
		resp, err := c.Post(e.url+path, api.ContentTypeJSON, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	approve := `{"device_ids":["` + br.DeviceID + `"]}`
	for _, tc := range []struct {
		client *http.Client
		actor  string
		code   api.Code
		status int
	}{
		{e.clientWith(nil), "anonymous", api.CodeUnauthenticated, 401},
		{e.clientWith(deviceCert), "device:" + br.DeviceID, api.CodeForbidden, 403},
		{e.clientWith(viewer), "viewer/vic", api.CodeForbidden, 403},
		{e.clientWith(factory), "factory/fred", api.CodeForbidden, 403},
	} {
		if got := post(tc.client, api.PathAdminDevices+"/approve", approve); got != tc.status {
			t.Errorf("%s: HTTP %d, want %d", tc.actor, got, tc.status)
		}
		n := 0
		for _, r := range e.audit("device.approve", "") {
			a := api.AuditActor{Kind: r.ActorKind, Name: r.ActorName, Role: r.ActorRole}
			if a.String() == tc.actor && r.Code == string(tc.code) && r.Outcome == "refused" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d refusal records for %s, want 1", n, tc.actor)
		}
	}
	// A malformed write by an authorised operator is audited too.
	op, _ := e.ca.IssueOperator(pki.RoleOperator, "olga", 0)
	if got := post(e.clientWith(op), api.PathAdminDevices+"/approve", `{"device_ids":["nope"]}`); got != 400 {
		t.Errorf("malformed approve: HTTP %d", got)
	}
	if n := len(e.audit("device.approve", "")); n != 5 {
		t.Errorf("%d device.approve records, want 5", n)
	}
}

func TestRolePermits(t *testing.T) {
	perms := []enrollserver.Permission{enrollserver.PermRead, enrollserver.PermImport, enrollserver.PermOperate, enrollserver.PermAdmin}
	want := map[pki.Role]string{
		pki.RoleAdmin:    "RIOA",
		pki.RoleOperator: "R.O.",
		pki.RoleFactory:  "RI..",
		pki.RoleViewer:   "R...",
		pki.Role("root"): "....",
	}
	for role, w := range want {
		got := ""
		for i, p := range perms {
			if enrollserver.RolePermits(role, p) {
				got += string(w[i])
			} else {
				got += "."
			}
		}
		if got != w {
			t.Errorf("%s permits %s, want %s", role, got, w)
		}
	}
}

// TestConfigBundles: templates render per device, versions never go down,
// and a device override wins over its group.
func TestConfigBundles(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	d := newDevice(t, e.mfr)
	id := deviceID(d.ekDER)
	for _, bad := range []string{`{"a":"${nope}"}`, `[1]`, `{"a":1,"a":2}`} {
		req := &api.ConfigSetRequest{ConfigScope: api.ConfigScope{Group: "default"}, Config: json.RawMessage(bad)}
		if err := req.Validate(); err == nil {
			if _, err := e.srv.SetConfig(ctx, opCall, req); err == nil {
				t.Errorf("config %s accepted", bad)
			}
		}
	}
	set := func(scope api.ConfigScope, cfg string) uint64 {
		cv, err := e.srv.SetConfig(ctx, opCall, &api.ConfigSetRequest{ConfigScope: scope, Config: json.RawMessage(cfg)})
		if err != nil {
			t.Fatal(err)
		}
		return cv.Version
	}
	if v := set(api.ConfigScope{Group: "default"}, `{"id":"${device_id}","g":"${group}","n":[1,"${serial}"]}`); v != 4 {
		t.Fatalf("first version %d, want 4 (above the default's 3)", v)
	}
	enroll := func() *pki.Bundle {
		br := e.begin(d)
		var fr api.FinishResponse
		if err := e.post(api.PathFinish, d.finish(br, br.Nonce), &fr); err != nil {
			t.Fatal(err)
		}
		b, err := pki.VerifyBundle(fr.Bundle, e.ca.RootPool(), id, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := enroll()
	if want := fmt.Sprintf(`{"g":"default","id":"%s","n":[1,""]}`, id); b.Version != 4 || string(b.Config) != want {
		t.Errorf("bundle %d %s, want 4 %s", b.Version, b.Config, want)
	}
	set(api.ConfigScope{DeviceID: id}, `{"mine":true}`)
	set(api.ConfigScope{Group: "default"}, `{"later":true}`)
	if b := enroll(); b.Version != 5 || string(b.Config) != `{"mine":true}` {
		t.Errorf("override: bundle %d %s", b.Version, b.Config)
	}
	cv, err := e.srv.RollbackConfig(ctx, opCall, &api.ConfigRollbackRequest{ConfigScope: api.ConfigScope{Group: "default"}, ToVersion: 4})
	if err != nil || cv.Version != 7 || cv.RolledBackFrom != 4 {
		t.Fatalf("rollback = %+v, %v", cv, err)
	}
	dd, err := e.srv.GetDevice(ctx, id)
	if err != nil || dd.ConfigScope != "device/"+id || dd.ConfigVersion != 5 || dd.Renewals != 1 {
		t.Errorf("device = %+v, %v", dd, err)
	}
}

// TestImportAllOrNothing drives the staged import through the server.
func TestImportAllOrNothing(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	fac := &enrollserver.Call{CorrelationID: "f", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "fred", Role: pki.RoleFactory}}
	run := func(partial bool, rows ...api.ImportRow) *api.ImportResult {
		t.Helper()
		st, err := e.srv.StartImport(ctx, fac, &api.ImportStartRequest{Source: "t.csv", Partial: partial})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.srv.StageImport(ctx, fac, st.ImportID, &api.ImportRowsRequest{Rows: rows}); err != nil {
			t.Fatal(err)
		}
		res, err := e.srv.CommitImport(ctx, fac, st.ImportID, &api.ImportCommitRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	ek := newDevice(t, e.mfr).ekCert
	certID := deviceID(newDevice(t, nil).ekDER)
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	res := run(false,
		api.ImportRow{Line: 2, DeviceID: a, Serial: "S1"},
		api.ImportRow{Line: 3, EKCertificate: ek, DeviceID: b, Serial: "S2"}, // hash mismatch
		api.ImportRow{Line: 4, EKCertificate: []byte("junk"), Serial: "S3"},
		api.ImportRow{Line: 5, DeviceID: b, Serial: "S1"}, // serial of line 2
	)
	if res.Applied || res.RejectedTotal != 3 || res.Rejected[0].Line != 3 || res.Rejected[1].Line != 4 || res.Rejected[2].Line != 5 {
		t.Fatalf("bad import = %+v", res)
	}
	if st, _ := e.store.Stats(ctx); st.Preregistrations != 0 {
		t.Fatal("a refused import wrote rows")
	}
	res = run(false, api.ImportRow{Line: 2, DeviceID: a, Serial: "S1"}, api.ImportRow{Line: 3, EKCertificate: ek, Serial: "S2", Group: "g"})
	if !res.Applied || res.Created != 2 || len(res.UndefinedGroups) != 1 {
		t.Fatalf("good import = %+v", res)
	}
	if _, err := e.store.Preregistration(ctx, certID); err != nil {
		t.Errorf("row by EK certificate: %v", err)
	}
	res = run(true, api.ImportRow{Line: 2, DeviceID: b, Serial: "S1"}, api.ImportRow{Line: 3, DeviceID: b, Serial: "S9"})
	if !res.Applied || res.Created != 1 || res.RejectedTotal != 1 || res.Rejected[0].Code != api.CodeConflict {
		t.Fatalf("partial import = %+v", res)
	}
	if n := len(e.audit("device.serial_conflict", "S1")); n != 1 {
		t.Errorf("%d serial conflict records, want 1", n)
	}
	// Another operator cannot commit fred's import.
	st, _ := e.srv.StartImport(ctx, fac, &api.ImportStartRequest{})
	if _, err := e.srv.CommitImport(ctx, opCall, st.ImportID, &api.ImportCommitRequest{}); err == nil {
		t.Error("another operator committed the import")
	}
}

// TestSetGroupRefusesLostUpdate: a write that names the UpdatedAt it read
// is refused with conflict once another operator changed the group, so
// that read-modify-write clients do not undo each other.
func TestSetGroupRefusesLostUpdate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	alice := &enrollserver.Call{CorrelationID: "a", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "alice", Role: pki.RoleOperator}}
	bob := &enrollserver.Call{CorrelationID: "b", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "bob", Role: pki.RoleOperator}}
	// Both read the group before it has a record.
	var never time.Time
	g, err := e.srv.SetGroup(ctx, alice, "line-a", &api.GroupSpec{Admission: api.AdmissionAuto, MeasuredBoot: api.MeasuredBootEnforce, ExpectUpdatedAt: &never})
	if err != nil {
		t.Fatalf("alice's write: %v", err)
	}
	_, err = e.srv.SetGroup(ctx, bob, "line-a", &api.GroupSpec{Admission: api.AdmissionAuto, Description: "x", ExpectUpdatedAt: &never})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeConflict {
		t.Fatalf("bob's write from a stale read: %v, want conflict", err)
	}
	// Read again, then the write goes through; nil writes unconditionally.
	if _, err := e.srv.SetGroup(ctx, bob, "line-a", &api.GroupSpec{Admission: api.AdmissionAuto, MeasuredBoot: api.MeasuredBootEnforce, Description: "x", ExpectUpdatedAt: &g.UpdatedAt}); err != nil {
		t.Fatalf("bob's write after reading again: %v", err)
	}
	if _, err := e.srv.SetGroup(ctx, alice, "line-a", &api.GroupSpec{Admission: api.AdmissionManual}); err != nil {
		t.Fatalf("an unconditional write: %v", err)
	}
	refused := 0
	for _, r := range e.audit("group.set", "") {
		if r.Outcome == "refused" && r.Code == string(api.CodeConflict) {
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("%d audited conflicts, want 1", refused)
	}
}

// TestAdminClearsAbandonedImport: one station holds at most its share of
// the staged imports; two that died hold every slot; an admin can abort
// them (audited), another factory credential cannot, and the line can
// import again.
func TestAdminClearsAbandonedImport(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	op := func(name string, role pki.Role) *enrollserver.Call {
		return &enrollserver.Call{CorrelationID: name, Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: name, Role: role}}
	}
	st2, st3, st4, admin := op("station-2", pki.RoleFactory), op("station-3", pki.RoleFactory), op("station-4", pki.RoleFactory), op("root", pki.RoleAdmin)
	var ids []string
	var ae *api.Error
	for _, st := range []*enrollserver.Call{st3, st2} {
		for range api.MaxOpenImportsPerOperator {
			r, err := e.srv.StartImport(ctx, st, &api.ImportStartRequest{Source: "interrupted.csv"})
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, r.ImportID)
		}
		if _, err := e.srv.StartImport(ctx, st, &api.ImportStartRequest{Source: "more.csv"}); !errors.As(err, &ae) || ae.Code != api.CodeBusy ||
			(st == st3 && !strings.Contains(ae.Message, "its share")) {
			t.Fatalf("%s past its share: %v, want busy naming the share while others have room", st.Principal.Name, err)
		}
	}
	if _, err := e.srv.StartImport(ctx, st4, &api.ImportStartRequest{Source: "batch.csv"}); !errors.As(err, &ae) || ae.Code != api.CodeBusy {
		t.Fatalf("a start past the open imports: %v, want busy", err)
	}
	if err := e.srv.AbortImport(ctx, st4, ids[0]); !errors.As(err, &ae) || ae.Code != api.CodeForbidden {
		t.Errorf("another station aborting: %v, want forbidden", err)
	}
	if err := e.srv.AbortImport(ctx, admin, ids[0]); err != nil {
		t.Fatalf("an admin aborting: %v", err)
	}
	if _, err := e.srv.StartImport(ctx, st4, &api.ImportStartRequest{Source: "batch.csv"}); err != nil {
		t.Errorf("a start after the admin's abort: %v", err)
	}
	if n := len(e.audit("import.abort", "import/"+ids[0])); n != 1 {
		t.Errorf("%d audit records of the admin's abort, want 1", n)
	}
}

// TestConfigHistoryPages: the history comes a page at a time, newest
// first, each page saying where the next begins.
func TestConfigHistoryPages(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	op := &enrollserver.Call{CorrelationID: "o", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "olga", Role: pki.RoleOperator}}
	scope := api.ConfigScope{Group: "line-a"}
	var first uint64
	for i := range 5 {
		cv, err := e.srv.SetConfig(ctx, op, &api.ConfigSetRequest{ConfigScope: scope, Config: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = cv.Version
		}
	}
	var got [][]uint64
	var before uint64
	for range 5 {
		h, err := e.srv.ConfigHistory(ctx, scope, 2, before)
		if err != nil {
			t.Fatal(err)
		}
		var page []uint64
		for _, v := range h.Versions {
			page = append(page, v.Version-first+1)
		}
		got = append(got, page)
		if before = h.NextBefore; before == 0 {
			break
		}
	}
	if want := [][]uint64{{5, 4}, {3, 2}, {1}}; !cmp.Equal(got, want) {
		t.Errorf("pages %v, want %v", got, want)
	}
}

// TestListGroupsPages: more groups than a page hold come in pages, each
// saying where the next begins, the default group (without a record) on
// the page its name falls in, none twice.
func TestListGroupsPages(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	op := &enrollserver.Call{CorrelationID: "o", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "olga", Role: pki.RoleOperator}}
	const n = api.MaxPageSize + 5
	for i := range n {
		if _, err := e.srv.SetGroup(ctx, op, fmt.Sprintf("g%04d", i), &api.GroupSpec{Admission: api.AdmissionAuto}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	pages := 0
	for after := ""; ; pages++ {
		l, err := e.srv.ListGroups(ctx, after)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range l.Groups {
			if seen[g.Name] || g.Name <= after {
				t.Fatalf("group %s listed twice or out of order (after %q)", g.Name, after)
			}
			seen[g.Name] = true
		}
		if after = l.NextAfter; after == "" || pages > 3 {
			break
		}
	}
	if len(seen) != n+1 || !seen[enrollserver.DefaultGroupName] || pages != 1 {
		t.Errorf("%d groups in %d pages (default listed: %v), want %d in 2", len(seen), pages+1, seen[enrollserver.DefaultGroupName], n+1)
	}
}

// failingRevocations is a store whose revocations cannot be read once
// fail is set.
type failingRevocations struct {
	store.Store
	fail atomic.Bool
}

func (f *failingRevocations) Revocations(ctx context.Context, fn func(*store.Revocation) bool) error {
	if f.fail.Load() {
		return errors.New("store unavailable")
	}
	return f.Store.Revocations(ctx, fn)
}

// TestCRLServedWhileResigningFails: when the CRL cannot be re-signed, the
// current one is still served until its nextUpdate, then the failure is
// reported; it is never served past its nextUpdate.
func TestCRLServedWhileResigningFails(t *testing.T) {
	ctx := context.Background()
	var st *failingRevocations
	e := newEnv(t, func(c *enrollserver.Config) {
		st = &failingRevocations{Store: c.Store}
		c.Store, c.CRLLifetime = st, time.Hour
	})
	first, err := e.srv.CRL(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.fail.Store(true)
	e.advance(40 * time.Minute) // past half the lifetime: it is re-signed
	if got, err := e.srv.CRL(ctx); err != nil || !bytes.Equal(got, first) {
		t.Errorf("before nextUpdate with re-signing failing: %v; want the current list", err)
	}
	if all, err := e.srv.CRLs(ctx); err != nil || len(all) != 1 || !bytes.Equal(all[0], first) {
		t.Errorf("CRLs before nextUpdate with re-signing failing: %d lists, %v", len(all), err)
	}
	e.advance(30 * time.Minute) // past nextUpdate
	if _, err := e.srv.CRL(ctx); err == nil {
		t.Error("a list past its nextUpdate was served")
	}
	st.fail.Store(false)
	if got, err := e.srv.CRL(ctx); err != nil || bytes.Equal(got, first) {
		t.Errorf("after the store is back: %v; want a new list", err)
	}
}
