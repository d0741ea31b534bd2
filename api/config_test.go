package api_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/pki"
)

// nestedObject returns a JSON object nesting depth levels deep, itself
// counting as 1: {"a":{"a":{}}} for 3.
func nestedObject(depth int) string {
	return strings.Repeat(`{"a":`, depth-1) + "{}" + strings.Repeat("}", depth-1)
}

func TestValidateConfigObject(t *testing.T) {
	deepPointer := strings.Repeat("/a", api.MaxConfigJSONDepth)
	for _, tt := range []struct {
		name   string
		config string
		want   string // "" means valid
	}{
		{"small object", `{"a":1,"b":[true,null,"${device_id}"]}`, ""},
		{"empty object", `{}`, ""},
		{"surrounding whitespace", " \n{\"a\":1}\n", ""},
		{"objects at MaxConfigJSONDepth", nestedObject(api.MaxConfigJSONDepth), ""},
		{"arrays at MaxConfigJSONDepth", `{"a":` + nested(api.MaxConfigJSONDepth-1) + `}`, ""},
		// Names are compared exactly, as in any map.
		{"names differing only in case", `{"port":1,"Port":2}`, ""},
		{"non-ASCII text", `{"motd":"grüß dich ✓"}`, ""},
		{"at MaxConfigBytes", `{"a":"` + strings.Repeat("x", api.MaxConfigBytes-8) + `"}`, ""},

		{"missing", ``, "config is required: a JSON object"},
		{"over MaxConfigBytes", `{"a":"` + strings.Repeat("x", api.MaxConfigBytes-7) + `"}`, fmt.Sprintf("config is %d bytes, limit is %d", api.MaxConfigBytes+1, api.MaxConfigBytes)},
		{"array", `[1]`, "config must be a JSON object"},
		{"string", `"x"`, "config must be a JSON object"},
		{"null", `null`, "config must be a JSON object"},
		{"number", `1`, "config must be a JSON object"},
		{"duplicate name", `{"a":1,"a":2}`, `config is not a JSON object: jsontext: duplicate object member name "a"`},
		{"duplicate name nested", `{"a":{"b":1,"b":2}}`, `duplicate object member name "b" within "/a"`},
		{"duplicate name spelled with an escape", `{"a":{"b":1,"\u0062":2}}`, `duplicate object member name "b" within "/a"`},
		{"invalid UTF-8 in a value", "{\"a\":\"\xff\"}", `invalid UTF-8 within "/a"`},
		{"invalid UTF-8 in a name", "{\"a\":{\"\xff\":1}}", `invalid UTF-8 within "/a"`},
		{"lone surrogate escape", `{"a":"\udc00"}`, `invalid surrogate pair`},
		{"trailing data", `{"a":1} {}`, "invalid character '{' after top-level value"},
		{"truncated", `{"a":`, "unexpected EOF"},
		{"objects past MaxConfigJSONDepth", nestedObject(api.MaxConfigJSONDepth + 1), fmt.Sprintf("config nests deeper than %d levels at %q", api.MaxConfigJSONDepth, deepPointer)},
		{"arrays past MaxConfigJSONDepth", `{"a":` + nested(api.MaxConfigJSONDepth) + `}`, fmt.Sprintf("config nests deeper than %d levels at %q", api.MaxConfigJSONDepth, "/a"+strings.Repeat("/0", api.MaxConfigJSONDepth-1))},
		{"far past jsontext's own cap", `{"a":` + nested(deepNesting) + `}`, fmt.Sprintf("config nests deeper than %d levels", api.MaxConfigJSONDepth)},
		// The depth is checked before any other fault further on.
		{"too deep, then a duplicate", nestedObject(api.MaxConfigJSONDepth+1) + `,"a":1}`, "config nests deeper than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := api.ValidateConfigObject(json.RawMessage(tt.config))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("ValidateConfigObject: %v", err)
				}
				return
			}
			wantBadRequest(t, err, tt.want)
		})
	}
}

// A config set request is refused whole, by the request decoder or by the
// config check its Validate runs.
func TestUnmarshalConfigSetRequest(t *testing.T) {
	for _, tt := range []struct {
		name, body, want string
	}{
		{"valid", `{"group":"line-a","config":{"a":1},"comment":"c"}`, ""},
		{"duplicate name in the config", `{"group":"line-a","config":{"a":1,"a":2}}`, `duplicate object member name "a" within "/config"`},
		{"config nests too deep", `{"group":"line-a","config":` + nestedObject(api.MaxConfigJSONDepth+1) + `}`, fmt.Sprintf("config nests deeper than %d levels", api.MaxConfigJSONDepth)},
		{"config null", `{"group":"line-a","config":null}`, "config must be a JSON object"},
		{"scope name differing in case", `{"Group":"line-a","config":{}}`, `unknown object member name "Group"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got api.ConfigSetRequest
			err := api.Unmarshal([]byte(tt.body), &got)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Unmarshal: %v", err)
				}
				return
			}
			wantBadRequest(t, err, tt.want)
		})
	}
}

// The admin API must not store a config the CA cannot sign into a bundle:
// the bundle payload wraps the config one level deeper.
func TestConfigAtMaxDepthIsSignable(t *testing.T) {
	config := nestedObject(api.MaxConfigJSONDepth)
	if err := api.ValidateConfigObject(json.RawMessage(config)); err != nil {
		t.Fatalf("ValidateConfigObject: %v", err)
	}
	ca, err := pki.LoadOrCreateCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := ca.SignBundle(pki.Bundle{DeviceID: deviceID(0), Version: 1, IssuedAt: now, ExpiresAt: now.Add(time.Hour), Config: json.RawMessage(config)}); err != nil {
		t.Fatalf("SignBundle of a config at MaxConfigJSONDepth: %v", err)
	}
}
