package api_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
)

func TestFirmwareRequestsValidate(t *testing.T) {
	d := func(i int) string { return fmt.Sprintf("%064x", i) }
	refs := func(n int) []api.FirmwareDigest {
		out := make([]api.FirmwareDigest, n)
		for i := range out {
			out[i] = api.FirmwareDigest{Digest: d(i), Name: fmt.Sprintf("fw %d", i)}
		}
		return out
	}
	for _, tt := range []struct {
		name string
		req  api.Validator
		want string // "" means valid
	}{
		{"add from device", &api.FirmwareAddRequest{Group: "g", FromDevice: d(1)}, ""},
		{"add from device, named", &api.FirmwareAddRequest{Group: "g", FromDevice: d(1), Name: "golden"}, ""},
		{"add digests", &api.FirmwareAddRequest{Group: "g", References: refs(3)}, ""},
		{"add the cap", &api.FirmwareAddRequest{Group: "g", References: refs(api.MaxFirmwareReferences)}, ""},
		{"add over the cap", &api.FirmwareAddRequest{Group: "g", References: refs(api.MaxFirmwareReferences + 1)}, "limit is 1024"},
		{"add nothing", &api.FirmwareAddRequest{Group: "g"}, "either a golden device"},
		{"add both", &api.FirmwareAddRequest{Group: "g", FromDevice: d(1), References: refs(1)}, "either a golden device"},
		{"add bad group", &api.FirmwareAddRequest{Group: "a/b", References: refs(1)}, "group"},
		{"add bad device", &api.FirmwareAddRequest{Group: "g", FromDevice: "ABC"}, "from_device"},
		{"add name with digests", &api.FirmwareAddRequest{Group: "g", Name: "x", References: refs(1)}, "name applies to from_device"},
		{"add upper-case digest", &api.FirmwareAddRequest{Group: "g", References: []api.FirmwareDigest{{Digest: strings.ToUpper(d(10)), Name: "x"}}}, "references[0].digest"},
		{"add short digest", &api.FirmwareAddRequest{Group: "g", References: []api.FirmwareDigest{{Digest: "abcd", Name: "x"}}}, "64 lowercase hex"},
		{"add empty name", &api.FirmwareAddRequest{Group: "g", References: []api.FirmwareDigest{{Digest: d(1), Name: " "}}}, "references[0].name"},
		{"add long name", &api.FirmwareAddRequest{Group: "g", References: []api.FirmwareDigest{{Digest: d(1), Name: strings.Repeat("n", api.MaxFirmwareNameLen+1)}}}, "1 to 256 bytes"},
		{"add control character", &api.FirmwareAddRequest{Group: "g", References: []api.FirmwareDigest{{Digest: d(1), Name: "a\x1bb"}}}, "control character"},
		{"add repeated digest", &api.FirmwareAddRequest{Group: "g", References: []api.FirmwareDigest{{Digest: d(1), Name: "a"}, {Digest: d(1), Name: "b"}}}, "repeats the digest"},
		{"add repeated name", &api.FirmwareAddRequest{Group: "g", References: []api.FirmwareDigest{{Digest: d(1), Name: "a"}, {Digest: d(2), Name: "a"}}}, "repeats the name"},
		{"retire", &api.FirmwareRetireRequest{Group: "g", Digests: []string{d(1), d(2)}, Reason: "CVE"}, ""},
		{"retire none", &api.FirmwareRetireRequest{Group: "g"}, "1 to 1024"},
		{"retire repeated", &api.FirmwareRetireRequest{Group: "g", Digests: []string{d(1), d(1)}}, "repeats"},
		{"retire bad digest", &api.FirmwareRetireRequest{Group: "g", Digests: []string{"x"}}, "digests[0]"},
		{"group enforce", &api.GroupSpec{Admission: "auto", MeasuredBoot: "enforce", RequireSecureBoot: true, RequiredPCRs: []int{8, 23}}, ""},
		{"group off", &api.GroupSpec{Admission: "auto", MeasuredBoot: "off"}, ""},
		{"group bad mode", &api.GroupSpec{Admission: "auto", MeasuredBoot: "audit"}, "must be off or enforce"},
		{"group PCR out of range", &api.GroupSpec{Admission: "auto", RequiredPCRs: []int{24}}, "out of range"},
		{"group PCR twice", &api.GroupSpec{Admission: "auto", RequiredPCRs: []int{8, 8}}, "listed twice"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
