package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/enrollservertest"
	"github.com/edgeenroll/edgeenroll/enrollserver/httpapi"
	"github.com/edgeenroll/edgeenroll/pki"
)

// testServer is an enrollment server core behind the HTTPS handler.
type testServer struct {
	url  string
	core *enrollservertest.Core
}

func newTestServer(t *testing.T, now func() time.Time) *testServer {
	t.Helper()
	c := enrollservertest.New(t, enrollserver.Config{Now: now}, nil)
	ts := httptest.NewUnstartedServer(httpapi.NewHandler(c.Server, httpapi.Options{}))
	cert, err := c.CA.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: c.CA.RootPool()}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return &testServer{url: ts.URL, core: c}
}

// credential writes an --admin-dir for an operator of role and name.
func (s *testServer) credential(t *testing.T, role pki.Role, name string) string {
	t.Helper()
	cert, err := s.core.CA.IssueOperator(role, name, 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "admin")
	if err := pki.WriteOperatorDir(dir, cert.Certificate, cert.PrivateKey, s.core.CA.Root().Raw); err != nil {
		t.Fatal(err)
	}
	return dir
}

// run runs enrollctl against s with the credential in dir and returns
// its standard output.
func (s *testServer) run(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	for _, k := range []string{"ENROLLCTL_SERVER", "ENROLLCTL_ADMIN_DIR", "ENROLLCTL_OUTPUT"} {
		t.Setenv(k, "")
	}
	root := rootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"--server", s.url, "--admin-dir", dir}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// TestImportList: `import --list` shows a factory station its own staged
// imports and an admin everyone's, as a table or JSON; with a FILE or
// --abort it is a usage error.
func TestImportList(t *testing.T) {
	var now atomic.Pointer[time.Time]
	t0 := time.Now()
	now.Store(&t0)
	s := newTestServer(t, func() time.Time { return *now.Load() })
	ctx := context.Background()
	start := func(name, source string) *api.ImportStartResponse {
		t.Helper()
		call := &enrollserver.Call{CorrelationID: name, Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: name, Role: pki.RoleFactory}}
		r, err := s.core.Server.StartImport(ctx, call, &api.ImportStartRequest{Source: source})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a := start("station-a", "line-a.csv")
	t1 := t0.Add(time.Minute)
	now.Store(&t1)
	b := start("station-b", "")
	stationA, admin := s.credential(t, pki.RoleFactory, "station-a"), s.credential(t, pki.RoleAdmin, "root")

	out, err := s.run(t, stationA, "import", "--list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "IMPORT ID") || !strings.Contains(lines[0], "EXPIRES") {
		t.Fatalf("station-a's table:\n%s", out)
	}
	for _, want := range []string{a.ImportID, "factory/station-a", "line-a.csv", a.ExpiresAt.UTC().Format(time.RFC3339)} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("station-a's row %q lacks %q", lines[1], want)
		}
	}

	out, err = s.run(t, admin, "import", "--list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var l api.ImportList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("JSON output %q: %v", out, err)
	}
	var ids []string
	for _, i := range l.Imports {
		ids = append(ids, i.ImportID)
	}
	if diff := cmp.Diff([]string{a.ImportID, b.ImportID}, ids); diff != "" {
		t.Errorf("an admin's list (-want, +got):\n%s", diff)
	}

	for _, args := range [][]string{{"import", "--list", "batch.csv"}, {"import", "--list", "--abort", b.ImportID}} {
		_, err := s.run(t, admin, args...)
		if exitCode(err) != exitUsage || !strings.Contains(err.Error(), "--list") {
			t.Errorf("%s: %v (exit %d), want a usage error about --list", strings.Join(args, " "), err, exitCode(err))
		}
	}
	// Nothing was aborted.
	if _, err := s.core.Store.Import(ctx, b.ImportID); err != nil {
		t.Errorf("import %s after the refused --list --abort: %v", b.ImportID, err)
	}
}
