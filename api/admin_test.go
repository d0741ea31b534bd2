package api_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
)

func TestPreregisterRequestValidate(t *testing.T) {
	rows := func(n int) []api.Preregistration {
		out := make([]api.Preregistration, n)
		for i := range out {
			out[i] = api.Preregistration{DeviceID: deviceID(i)}
		}
		return out
	}
	with := func(mut func(*api.PreregisterRequest)) *api.PreregisterRequest {
		r := validPreregister()
		mut(r)
		return r
	}
	for _, tt := range []struct {
		name string
		req  *api.PreregisterRequest
		want string // "" means valid
	}{
		{"valid", validPreregister(), ""},
		{"one row", &api.PreregisterRequest{Devices: rows(1)}, ""},
		{"MaxPreregistrationsPerRequest rows", &api.PreregisterRequest{Devices: rows(api.MaxPreregistrationsPerRequest)}, ""},
		{"serial and group at their limits", with(func(r *api.PreregisterRequest) {
			r.Devices[0].Serial = strings.Repeat("s", api.MaxSerialLen)
			r.Devices[0].Group = strings.Repeat("g", api.MaxGroupLen)
		}), ""},

		{"nil devices", &api.PreregisterRequest{}, "devices must list 1 to 10000 rows, got 0"},
		{"empty devices", &api.PreregisterRequest{Devices: []api.Preregistration{}}, "got 0"},
		{"too many rows", &api.PreregisterRequest{Devices: rows(api.MaxPreregistrationsPerRequest + 1)}, "devices must list 1 to 10000 rows, got 10001"},
		{"empty device id", with(func(r *api.PreregisterRequest) { r.Devices[1].DeviceID = "" }), `devices[1].device_id "" must be 64 lowercase hex characters`},
		{"upper-case device id", with(func(r *api.PreregisterRequest) { r.Devices[2].DeviceID = strings.ToUpper(deviceID(2)) }), "devices[2].device_id"},
		{"short device id", with(func(r *api.PreregisterRequest) { r.Devices[0].DeviceID = deviceID(0)[:63] }), "devices[0].device_id"},
		{"duplicate rows", with(func(r *api.PreregisterRequest) { r.Devices[2] = r.Devices[0] }), "devices[2] repeats the device of devices[0]"},
		{"same device, other serial", with(func(r *api.PreregisterRequest) { r.Devices[2].DeviceID = r.Devices[1].DeviceID }), "devices[2] repeats the device of devices[1]"},
		{"long serial", with(func(r *api.PreregisterRequest) { r.Devices[1].Serial = strings.Repeat("s", api.MaxSerialLen+1) }), "devices[1]: serial is limited to 128 bytes and group to 64"},
		{"long group", with(func(r *api.PreregisterRequest) { r.Devices[0].Group = strings.Repeat("g", api.MaxGroupLen+1) }), "devices[0]: serial is limited to 128 bytes and group to 64"},
		{"control character in serial", with(func(r *api.PreregisterRequest) { r.Devices[1].Serial = "SN\n1" }), "devices[1].serial contains control character U+000A"},
		{"C1 control character in group", with(func(r *api.PreregisterRequest) { r.Devices[2].Group = "a\u0085b" }), "devices[2].group contains control character U+0085"},
		{"invalid UTF-8 in serial", with(func(r *api.PreregisterRequest) { r.Devices[0].Serial = "SN\xff" }), "devices[0].serial is not valid UTF-8"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			wantBadRequest(t, err, tt.want)
		})
	}
}

func TestUnmarshalPreregisterRefusals(t *testing.T) {
	valid := func(t *testing.T) []byte { return marshal(t, validPreregister(), nil) }
	for _, tt := range []struct {
		name string
		body func(*testing.T) []byte
		want string
	}{
		{"unknown field in a row", func(t *testing.T) []byte { return splice(t, valid(t), `"devices":[{`, `"owner":"x",`) }, `unknown object member name "owner" within "/devices/0"`},
		{"duplicate key in a row", func(t *testing.T) []byte {
			return splice(t, valid(t), `"serial":"SN-0001",`, fmt.Sprintf(`"device_id":%q,`, deviceID(9)))
		}, `duplicate object member name "device_id" within "/devices/1"`},
		// Names match exactly: a name differing only in case is unknown.
		{"key in a row differing only in case is unknown", func(t *testing.T) []byte {
			return splice(t, valid(t), `"serial":"SN-0001",`, fmt.Sprintf(`"Device_ID":%q,`, deviceID(9)))
		}, `unknown object member name "Device_ID" within "/devices/1"`},
		{"duplicate devices", func(t *testing.T) []byte { return splice(t, valid(t), `{`, `"devices":[],`) }, `duplicate object member name "devices"`},
		{"invalid UTF-8 in a serial", func(t *testing.T) []byte { return splice(t, valid(t), `"serial":"SN-0001`, "\xff") }, `invalid UTF-8 within "/devices/1/serial"`},
		{"devices not a list", func(*testing.T) []byte { return []byte(`{"devices":{}}`) }, `unmarshal JSON object into Go []api.Preregistration within "/devices"`},
		{"null devices", func(*testing.T) []byte { return []byte(`{"devices":null}`) }, "got 0"},
		{"trailing data", func(t *testing.T) []byte { return append(valid(t), "[]"...) }, "invalid character '[' after top-level value"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got api.PreregisterRequest
			wantBadRequest(t, api.Unmarshal(tt.body(t), &got), tt.want)
		})
	}
}
