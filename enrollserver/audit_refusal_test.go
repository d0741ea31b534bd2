package enrollserver_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// TestAnonymousFloodKeepsOperatorRefusals: a flood of unauthenticated
// admin calls, past the refusal rate limit, neither hides an operator's
// refused action nor a device's refused enrollment from the audit log.
func TestAnonymousFloodKeepsOperatorRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	anon := &enrollserver.Call{CorrelationID: "anon", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalAnonymous}}
	for range 2 * 10 * int(enrollserver.DefaultAuditRefusalsPerSecond) {
		e.srv.Authorize(ctx, anon, enrollserver.PermRead, "devices.list", "/v1/admin/devices")
	}
	viewer := &enrollserver.Call{CorrelationID: "mallory-1", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "mallory", Role: pki.RoleViewer}}
	var ae *api.Error
	if err := e.srv.Authorize(ctx, viewer, enrollserver.PermOperate, "device.revoke", "/v1/admin/devices/revoke"); !errors.As(err, &ae) || ae.Code != api.CodeForbidden {
		t.Fatalf("a viewer revoking: %v, want forbidden", err)
	}
	// A device with a certificate from an unknown vendor is refused.
	d := newDevice(t, nil)
	var br api.BeginResponse
	wantCode(t, e.post(api.PathBegin, d.begin(), &br), api.CodeNotRegistered)

	var anonymous, operator int
	e.store.AuditLog(ctx, 0, func(r *store.AuditRecord) bool {
		switch r.ActorKind {
		case enrollserver.PrincipalAnonymous:
			anonymous++
		case enrollserver.PrincipalOperator:
			if r.ActorName == "mallory" && r.Action == "device.revoke" && r.Outcome == "refused" {
				operator++
			}
		}
		return true
	})
	if operator != 1 {
		t.Errorf("%d audit records of the viewer's refused revoke, want 1", operator)
	}
	if limit := 10 * int(enrollserver.DefaultAuditRefusalsPerSecond); anonymous > limit+1 {
		t.Errorf("%d anonymous refusals recorded, want at most the burst (%d)", anonymous, limit)
	}
}

// TestRefusedAdminPathIsBounded: an unauthenticated call to a device
// action the API does not have, with a long path, is audited as
// device.unknown with a clipped target.
func TestRefusedAdminPathIsBounded(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("a", 12000)
	req, err := http.NewRequest(http.MethodPost, e.url+api.PathAdminDevices+"/"+long, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", api.ContentTypeJSON)
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("HTTP %d, want 401", resp.StatusCode)
	}
	n := 0
	e.store.AuditLog(context.Background(), 0, func(r *store.AuditRecord) bool {
		n++
		if r.Action != "device.unknown" || len(r.Target) > 256 || !strings.HasSuffix(r.Target, "…") {
			t.Errorf("audit record action %q, target of %d bytes; want device.unknown and at most 256 bytes, clipped", r.Action, len(r.Target))
		}
		return true
	})
	if n != 1 {
		t.Errorf("%d audit records, want 1", n)
	}
}
