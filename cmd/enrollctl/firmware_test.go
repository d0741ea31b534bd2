package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/api"
)

func TestParseFirmwareFiles(t *testing.T) {
	d1, d2 := fmt.Sprintf("%064x", 1), fmt.Sprintf("%064x", 2)
	for _, tt := range []struct {
		name, data, prefix string
		want               []api.FirmwareDigest
		err                string
	}{
		{name: "text", data: "# approved\n" + d1 + " acme 1.4\n\n" + strings.ToUpper(d2) + "   # no name\n",
			want: []api.FirmwareDigest{{Digest: d1, Name: "acme 1.4"}, {Digest: d2, Name: "firmware " + d2[:12]}}},
		{name: "text with --name", data: d2 + "\n", prefix: "acme",
			want: []api.FirmwareDigest{{Digest: d2, Name: "acme " + d2[:12]}}},
		{name: "text bad digest", data: d1 + "\nxyz name\n", err: "f:2: \"xyz\" is not a firmware digest"},
		{name: "empty", data: "# nothing\n", err: "lists no firmware"},
		{name: "json array", data: `[{"digest":"` + d1 + `","name":"a"}]`, want: []api.FirmwareDigest{{Digest: d1, Name: "a"}}},
		{name: "firmware list -o json", data: `{"references":[{"group":"g","digest":"` + d2 + `","name":"b","created_at":"2026-01-01T00:00:00Z","created_by":"operator/alice"}]}`,
			want: []api.FirmwareDigest{{Digest: d2, Name: "b"}}},
		{name: "json unknown field", data: `[{"digest":"` + d1 + `","nam":"a"}]`, err: "unknown field"},
		{name: "json trailing data", data: `[{"digest":"` + d1 + `","name":"a"}] []`, err: "trailing data"},
		{name: "json without digest", data: `[{"name":"a"}]`, err: "entry 0 has no digest"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := []byte(strings.TrimSpace(tt.data))
			var got []api.FirmwareDigest
			var err error
			if len(b) > 0 && (b[0] == '[' || b[0] == '{') {
				got, err = parseFirmwareJSON("f", b)
			} else {
				got, err = parseFirmwareText("f", b, tt.prefix)
			}
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %v, want an error containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want, +got):\n%s", diff)
			}
		})
	}
}

// TestActionExit: a revocation whose CRL could not be signed again is not
// reported as a plain success.
func TestActionExit(t *testing.T) {
	ok := api.DeviceActionResult{Outcome: api.OutcomeChanged}
	refused := api.DeviceActionResult{Outcome: api.OutcomeRefused, Code: api.CodeNotFound, Message: "no such device"}
	for _, tt := range []struct {
		name string
		resp api.DeviceActionResponse
		want int
	}{
		{"all changed", api.DeviceActionResponse{Results: []api.DeviceActionResult{ok}}, exitOK},
		{"CRL not signed", api.DeviceActionResponse{Action: api.ActionRevoke, Results: []api.DeviceActionResult{ok}, CRLError: "store down"}, exitPartial},
		{"some refused", api.DeviceActionResponse{Results: []api.DeviceActionResult{ok, refused}}, exitPartial},
		{"all refused", api.DeviceActionResponse{Results: []api.DeviceActionResult{refused}}, exitNotFound},
	} {
		if got := exitCode(actionExit(&tt.resp)); got != tt.want {
			t.Errorf("%s: exit %d, want %d", tt.name, got, tt.want)
		}
	}
}
