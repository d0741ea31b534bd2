package enrollserver_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/pki"
)

// TestRevokeOperator: an admin revokes an operator credential by serial;
// every admin call made with it is then refused (401) and audited, while
// other credentials keep working; revoking it again changes nothing; an
// admin cannot revoke the credential it calls with.
func TestRevokeOperator(t *testing.T) {
	e := newEnv(t)
	admin, err := e.ca.IssueOperator(pki.RoleAdmin, "ada", 0)
	if err != nil {
		t.Fatal(err)
	}
	bob, err := e.ca.IssueOperator(pki.RoleViewer, "bob", 0)
	if err != nil {
		t.Fatal(err)
	}
	carol, err := e.ca.IssueOperator(pki.RoleViewer, "carol", 0)
	if err != nil {
		t.Fatal(err)
	}
	list := func(c *http.Client) int {
		resp, err := c.Get(e.url + api.PathAdminDevices)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	revoke := func(c *http.Client, serial string) (int, api.OperatorRevokeResponse) {
		body, _ := json.Marshal(api.OperatorRevokeRequest{Serial: serial, Reason: "laptop lost"})
		resp, err := c.Post(e.url+api.PathAdminOperatorsRevoke, api.ContentTypeJSON, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out api.OperatorRevokeResponse
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	serial := bob.Leaf.SerialNumber.Text(16)
	if got := list(e.clientWith(bob)); got != http.StatusOK {
		t.Fatalf("bob lists devices: HTTP %d", got)
	}
	if got, _ := revoke(e.clientWith(bob), serial); got != http.StatusForbidden {
		t.Errorf("a viewer revoking: HTTP %d, want 403", got)
	}
	if got, out := revoke(e.clientWith(admin), serial); got != http.StatusOK || !out.Changed || out.Serial != serial {
		t.Fatalf("revoke: HTTP %d, %+v", got, out)
	}
	if got := list(e.clientWith(bob)); got != http.StatusUnauthorized {
		t.Errorf("bob after revocation: HTTP %d, want 401", got)
	}
	if got := list(e.clientWith(carol)); got != http.StatusOK {
		t.Errorf("carol after bob's revocation: HTTP %d, want 200", got)
	}
	if got, out := revoke(e.clientWith(admin), serial); got != http.StatusOK || out.Changed {
		t.Errorf("revoking again: HTTP %d, %+v; want unchanged", got, out)
	}
	if got, _ := revoke(e.clientWith(admin), admin.Leaf.SerialNumber.Text(16)); got != http.StatusBadRequest {
		t.Errorf("an admin revoking its own credential: HTTP %d, want 400", got)
	}
	ok := 0
	for _, r := range e.audit("operator.revoke", "") {
		if r.Outcome == "success" {
			ok++
		}
	}
	if ok != 1 {
		t.Errorf("%d operator.revoke success records, want 1", ok)
	}
	refused := 0
	for _, r := range e.audit("devices.list", "") {
		if r.Outcome == "refused" && r.Code == string(api.CodeUnauthenticated) && r.ActorName == "bob" {
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("%d audit records of bob's refused call, want 1", refused)
	}
}
