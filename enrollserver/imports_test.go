package enrollserver_test

import (
	"context"
	"encoding/json"
	"errors"
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

func operatorCall(role pki.Role, name string) *enrollserver.Call {
	return &enrollserver.Call{CorrelationID: name, Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: name, Role: role}}
}

// startImport opens a staged import of call and returns its ID.
func (e *env) startImport(call *enrollserver.Call, req *api.ImportStartRequest) *api.ImportStartResponse {
	e.t.Helper()
	st, err := e.srv.StartImport(context.Background(), call, req)
	if err != nil {
		e.t.Fatalf("%s starting an import: %v", call.Principal, err)
	}
	return st
}

func importIDs(l *api.ImportList) []string {
	out := []string{}
	for _, i := range l.Imports {
		out = append(out, i.ImportID)
	}
	return out
}

// TestListImports: an operator lists its own open imports, an admin every
// operator's, oldest first, with their metadata and counts; committed,
// aborted and expired ones are not listed. Over HTTPS the route needs
// PermImport.
func TestListImports(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a, b, admin := operatorCall(pki.RoleFactory, "station-a"), operatorCall(pki.RoleFactory, "station-b"), operatorCall(pki.RoleAdmin, "root")
	list := func(call *enrollserver.Call) *api.ImportList {
		t.Helper()
		l, err := e.srv.ListImports(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	sha := strings.Repeat("0f", 32)
	a1 := e.startImport(a, &api.ImportStartRequest{Source: "a1.csv", SHA256: sha, Partial: true})
	e.advance(time.Minute)
	b1 := e.startImport(b, &api.ImportStartRequest{Source: "b1.csv"}).ImportID
	e.advance(time.Minute)
	a2 := e.startImport(a, &api.ImportStartRequest{DryRun: true}).ImportID
	if _, err := e.srv.StageImport(ctx, a, a1.ImportID, &api.ImportRowsRequest{Rows: []api.ImportRow{
		{Line: 2, DeviceID: strings.Repeat("a", 64), Serial: "S1"}, {Line: 3, DeviceID: strings.Repeat("b", 64)}, // no serial
	}}); err != nil {
		t.Fatal(err)
	}
	committed := e.startImport(a, &api.ImportStartRequest{}).ImportID
	if _, err := e.srv.CommitImport(ctx, a, committed, &api.ImportCommitRequest{}); err != nil {
		t.Fatal(err)
	}
	aborted := e.startImport(b, &api.ImportStartRequest{}).ImportID
	if err := e.srv.AbortImport(ctx, b, aborted); err != nil {
		t.Fatal(err)
	}

	got := list(a)
	want := []api.ImportSummary{{ImportID: a1.ImportID, Operator: "factory/station-a", Source: "a1.csv", SHA256: sha, Partial: true,
		CreatedAt: a1.ExpiresAt.Add(-api.ImportStagingTTL), ExpiresAt: a1.ExpiresAt, Staged: 1, Rejected: 1}}
	if diff := cmp.Diff(want, got.Imports[:min(1, len(got.Imports))]); diff != "" {
		t.Errorf("station-a's first import (-want, +got):\n%s", diff)
	}
	for _, tt := range []struct {
		name string
		call *enrollserver.Call
		want []string
	}{
		{"station-a sees its own", a, []string{a1.ImportID, a2}},
		{"station-b sees its own", b, []string{b1}},
		{"another factory station sees none", operatorCall(pki.RoleFactory, "station-c"), []string{}},
		{"an admin sees all", admin, []string{a1.ImportID, b1, a2}},
	} {
		if diff := cmp.Diff(tt.want, importIDs(list(tt.call))); diff != "" {
			t.Errorf("%s (-want, +got):\n%s", tt.name, diff)
		}
	}

	// Over HTTPS, with each role's credential.
	get := func(role pki.Role, name string) (*api.ImportList, api.Code) {
		t.Helper()
		cert, err := e.ca.IssueOperator(role, name, 0)
		if err != nil {
			t.Fatal(err)
		}
		resp, body := get(t, e.clientWith(cert), e.url+api.PathAdminImports, nil)
		if resp.StatusCode != http.StatusOK {
			return nil, errorCode(t, body)
		}
		var l api.ImportList
		if err := json.Unmarshal([]byte(body), &l); err != nil {
			t.Fatal(err)
		}
		return &l, ""
	}
	if l, code := get(pki.RoleFactory, "station-a"); code != "" || !cmp.Equal(importIDs(l), []string{a1.ImportID, a2}) {
		t.Errorf("GET as station-a: %v, %s", l, code)
	}
	if l, code := get(pki.RoleAdmin, "root"); code != "" || !cmp.Equal(importIDs(l), []string{a1.ImportID, b1, a2}) {
		t.Errorf("GET as an admin: %v, %s", l, code)
	}
	for _, role := range []pki.Role{pki.RoleViewer, pki.RoleOperator} {
		if _, code := get(role, "nosy"); code != api.CodeForbidden {
			t.Errorf("GET as %s: %q, want forbidden", role, code)
		}
	}

	// Once the first has expired (purged or not), it is not listed.
	e.advance(api.ImportStagingTTL - 2*time.Minute)
	if diff := cmp.Diff([]string{b1, a2}, importIDs(list(admin))); diff != "" {
		t.Errorf("after the first expired (-want, +got):\n%s", diff)
	}
}

// raceyImports is a store that cannot list staged imports once failList
// is set, and refuses new ones as if every slot were taken (the refusal
// racing with their commits) while full is set.
type raceyImports struct {
	store.Store
	failList, full atomic.Bool
}

func (f *raceyImports) ListImports(ctx context.Context, now time.Time, limit int) ([]*store.ImportBatch, error) {
	if f.failList.Load() {
		return nil, errors.New("store unavailable")
	}
	return f.Store.ListImports(ctx, now, limit)
}

func (f *raceyImports) CreateImport(ctx context.Context, b *store.ImportBatch, max, perOperator int) error {
	if f.full.Load() {
		return store.ErrTooManyImports
	}
	return f.Store.CreateImport(ctx, b, max, perOperator)
}

// TestImportBusyRetryAfter: a start refused for want of a slot is told to
// retry when the first import holding a slot it needs expires (rounded up
// to whole seconds, at most the staging TTL), and which import that is;
// at once if they ended meanwhile; if they cannot be listed, after the
// staging TTL.
func TestImportBusyRetryAfter(t *testing.T) {
	ctx := context.Background()
	var st *raceyImports
	e := newEnv(t, func(c *enrollserver.Config) {
		st = &raceyImports{Store: c.Store}
		c.Store = st
	})
	a, b, c := operatorCall(pki.RoleFactory, "station-a"), operatorCall(pki.RoleFactory, "station-b"), operatorCall(pki.RoleFactory, "station-c")
	admin := operatorCall(pki.RoleAdmin, "root")
	busy := func(call *enrollserver.Call) *api.Error {
		t.Helper()
		_, err := e.srv.StartImport(ctx, call, &api.ImportStartRequest{Source: "more.csv"})
		return wantAPICode(t, err, api.CodeBusy)
	}
	check := func(name string, ae *api.Error, retry int, first *api.ImportStartResponse) {
		t.Helper()
		if ae.RetryAfterSeconds != retry {
			t.Errorf("%s: retry after %d s, want %d", name, ae.RetryAfterSeconds, retry)
		}
		if first != nil && !strings.Contains(ae.Message, "first to expire is import "+first.ImportID) ||
			first != nil && !strings.Contains(ae.Message, first.ExpiresAt.UTC().Format(time.RFC3339)) {
			t.Errorf("%s: %q does not name import %s and its expiry", name, ae.Message, first.ImportID)
		}
		if first == nil && strings.Contains(ae.Message, "first to expire") {
			t.Errorf("%s: %q names an import", name, ae.Message)
		}
	}
	// station-b's imports start first, a minute apart, then station-a's:
	// every slot is taken.
	var bs, as []*api.ImportStartResponse
	for range api.MaxOpenImportsPerOperator {
		bs = append(bs, e.startImport(b, &api.ImportStartRequest{Source: "b.csv"}))
		e.advance(time.Minute)
	}
	for range api.MaxOpenImportsPerOperator {
		as = append(as, e.startImport(a, &api.ImportStartRequest{Source: "a.csv"}))
		e.advance(time.Minute)
	}
	e.advance(300 * time.Millisecond)
	left := func(r *api.ImportStartResponse) time.Duration { return r.ExpiresAt.Sub(e.clock()) }
	ceil := func(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }
	if got := left(bs[0]); got%time.Second == 0 {
		t.Fatalf("%s left: the test needs a fraction of a second", got)
	}

	// station-c waits for the first import of all, station-b's.
	check("every slot taken", busy(c), ceil(left(bs[0])), bs[0])
	// station-a holds its whole share too: a slot station-b frees would
	// not let it start, its own first one would.
	check("every slot taken, and station-a's share", busy(a), ceil(left(as[0])), as[0])
	// Room overall, not in station-a's share.
	if err := e.srv.AbortImport(ctx, admin, bs[0].ImportID); err != nil {
		t.Fatal(err)
	}
	ae := busy(a)
	if !strings.Contains(ae.Message, "its share") {
		t.Errorf("share refusal: %q", ae.Message)
	}
	check("station-a's share", ae, ceil(left(as[0])), as[0])

	// A clock that went back: never more than the TTL.
	e.advance(-time.Hour)
	check("clock went back", busy(a), int(api.ImportStagingTTL/time.Second), as[0])
	e.advance(time.Hour)
	// Under a second left: 1 s, not 0 (which would send no Retry-After).
	e.advance(left(as[0]) - 300*time.Millisecond)
	check("under a second left", busy(a), 1, as[0])

	// The slots freed between the refusal and the listing: at once.
	st.full.Store(true)
	check("slots freed meanwhile", busy(b), 1, nil)
	st.full.Store(false)

	// The store cannot list them: the TTL, naming none.
	st.failList.Store(true)
	check("listing failed", busy(a), int(api.ImportStagingTTL/time.Second), nil)
	if _, err := e.srv.ListImports(ctx, a); err == nil {
		t.Error("ListImports with the store failing: no error")
	}
}
