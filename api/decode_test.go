package api_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/api"
)

func TestUnmarshalRoundTrip(t *testing.T) {
	t.Run("begin", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			mut  func(*api.BeginRequest)
		}{
			{"full", nil},
			{"no EK certificate", func(r *api.BeginRequest) { r.EKCertificate = nil }},
			{"no device info", func(r *api.BeginRequest) { r.Device = api.DeviceInfo{} }},
			{"blobs at MaxBlobBytes", func(r *api.BeginRequest) {
				r.EKPublic = blobOf(api.MaxBlobBytes, 1)
				r.EKCertificate = blobOf(api.MaxBlobBytes, 2)
			}},
			{"hostname at MaxDeviceInfoLen", func(r *api.BeginRequest) {
				r.Device.Hostname = strings.Repeat("h", api.MaxDeviceInfoLen)
			}},
			{"non-ASCII hostname", func(r *api.BeginRequest) { r.Device.Hostname = "gerät-küche-✓" }},
		} {
			t.Run(tt.name, func(t *testing.T) {
				want := validBegin()
				if tt.mut != nil {
					tt.mut(want)
				}
				roundTrip(t, want)
			})
		}
	})
	t.Run("finish", func(t *testing.T) {
		for _, tt := range []struct {
			name string
			mut  func(*api.FinishRequest)
		}{
			{"three PCRs", nil},
			{"one PCR", func(r *api.FinishRequest) { r.PCRs = r.PCRs[:1] }},
			{"all MaxPCRs PCRs", func(r *api.FinishRequest) {
				r.PCRs = nil
				for i := range api.MaxPCRs {
					r.PCRs = append(r.PCRs, api.PCR{Index: api.MaxPCRs - 1 - i, Digest: blobOf(sha256.Size, byte(i))})
				}
			}},
			{"CSR at MaxBlobBytes", func(r *api.FinishRequest) { r.CSR = blobOf(api.MaxBlobBytes, 3) }},
		} {
			t.Run(tt.name, func(t *testing.T) {
				want := validFinish()
				if tt.mut != nil {
					tt.mut(want)
				}
				roundTrip(t, want)
			})
		}
	})
	t.Run("preregister", func(t *testing.T) {
		roundTrip(t, validPreregister())
	})
}

// roundTrip marshals want, decodes it with Unmarshal and Decode, and
// compares both results with want.
func roundTrip[T any, PT interface {
	*T
	api.Validator
}](t *testing.T, want PT) {
	t.Helper()
	body, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	got := PT(new(T))
	if err := api.Unmarshal(body, got); err != nil {
		t.Fatalf("Unmarshal(%s): %v", body, err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Unmarshal mismatch (-want, +got):\n%s", diff)
	}
	got = PT(new(T))
	if err := api.Decode(bytes.NewReader(body), int64(len(body)), got); err != nil {
		t.Fatalf("Decode with limit = body size: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Decode mismatch (-want, +got):\n%s", diff)
	}
}

// deepNesting is deeper than jsontext's own cap (10000) and than any
// message nests.
const deepNesting = 12000

// nested returns depth nested JSON arrays around 1.
func nested(depth int) string {
	return strings.Repeat("[", depth) + "1" + strings.Repeat("]", depth)
}

func TestUnmarshalBeginRefusals(t *testing.T) {
	valid := func(t *testing.T) []byte { return marshal(t, validBegin(), nil) }
	with := func(mut func(*api.BeginRequest)) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return marshal(t, validBegin(), mut) }
	}
	raw := func(s string) func(*testing.T) []byte { return func(*testing.T) []byte { return []byte(s) } }
	for _, tt := range []struct {
		name string
		body func(*testing.T) []byte
		want string
	}{
		// Strict JSON. Errors name the member by its JSON pointer. The
		// decoder says "cannot unmarshal" or "unable to unmarshal", picked
		// at random per process so nobody depends on the wording; cases
		// match from "unmarshal" on.
		{"unknown top-level field", func(t *testing.T) []byte { return splice(t, valid(t), `{`, `"extra":1,`) }, `unknown object member name "extra"`},
		{"unknown field in ak", func(t *testing.T) []byte { return splice(t, valid(t), `"ak":{`, `"bogus":"AA==",`) }, `unknown object member name "bogus" within "/ak"`},
		{"unknown field in device", func(t *testing.T) []byte { return splice(t, valid(t), `"device":{`, `"os":"linux",`) }, `unknown object member name "os" within "/device"`},
		{"duplicate top-level key", func(t *testing.T) []byte { return splice(t, valid(t), `{`, `"ek_public":"AQ==",`) }, `duplicate object member name "ek_public"`},
		// Names match exactly: a name differing only in case matches no
		// field, so it is an unknown member.
		{"top-level key differing only in case is unknown", func(t *testing.T) []byte { return splice(t, valid(t), `{`, `"EK_Public":"AQ==",`) }, `unknown object member name "EK_Public"`},
		{"duplicate key spelled with an escape", func(t *testing.T) []byte { return splice(t, valid(t), `{`, `"ek\u005fpublic":"AQ==",`) }, `duplicate object member name "ek_public"`},
		{"duplicate key nested in ak", func(t *testing.T) []byte { return splice(t, valid(t), `"ak":{`, `"public":"AQ==",`) }, `duplicate object member name "public" within "/ak"`},
		{"key in ak differing only in case is unknown", func(t *testing.T) []byte { return splice(t, valid(t), `"ak":{`, `"PUBLIC":"AQ==",`) }, `unknown object member name "PUBLIC" within "/ak"`},
		{"duplicate ak object", func(t *testing.T) []byte { return splice(t, valid(t), `{`, `"ak":{},`) }, `duplicate object member name "ak"`},
		{"duplicate key in device", func(t *testing.T) []byte { return splice(t, valid(t), `"device":{`, `"hostname":"a",`) }, `duplicate object member name "hostname" within "/device"`},
		{"trailing object", func(t *testing.T) []byte { return append(valid(t), `{}`...) }, "invalid character '{' after top-level value"},
		{"trailing number", func(t *testing.T) []byte { return append(valid(t), ` 1`...) }, "invalid character '1' after top-level value"},
		{"trailing garbage", func(t *testing.T) []byte { return append(valid(t), `x`...) }, "invalid character 'x' after top-level value"},
		{"trailing close brace", func(t *testing.T) []byte { return append(valid(t), `}`...) }, "invalid character '}' after top-level value"},
		// No field of a begin request takes arbitrary nesting, so deep
		// nesting is refused at its first bracket, before it is read.
		{"deep nesting in an unknown member", func(t *testing.T) []byte {
			return splice(t, valid(t), `{`, `"deep":`+nested(deepNesting)+`,`)
		}, `unknown object member name "deep"`},
		{"deep nesting in an unknown member of ak", func(t *testing.T) []byte {
			return splice(t, valid(t), `"ak":{`, `"x":`+nested(deepNesting)+`,`)
		}, `unknown object member name "x" within "/ak"`},
		// A blob's value is read whole before its type is checked; the
		// read stops at jsontext's cap (without recursion).
		{"deep nesting in place of a blob", func(t *testing.T) []byte {
			return replace(t, valid(t), `"ek_certificate":"`, `"ek_certificate":`+nested(deepNesting)+`,"x":"`)
		}, `jsontext: exceeded max depth within "/ek_certificate/0/0/0`},
		{"deep top-level array", raw(nested(deepNesting)), "unmarshal JSON array into Go api.BeginRequest"},
		{"not an object", raw(`[]`), "unmarshal JSON array into Go api.BeginRequest"},
		{"empty body", raw(``), "invalid JSON: jsontext: unexpected EOF"},
		{"truncated", func(t *testing.T) []byte { b := valid(t); return b[:len(b)-1] }, "unexpected EOF after offset"},
		{"blob is not base64", func(t *testing.T) []byte { return splice(t, valid(t), `"ak":{"public":"`, `!`) }, `unmarshal JSON string into Go []uint8 within "/ak/public": illegal base64 data`},
		{"blob is a JSON array of bytes", func(t *testing.T) []byte {
			return replace(t, valid(t), `"ek_certificate":"`, `"ek_certificate":[1,2],"x":"`)
		}, `unmarshal JSON array into Go []uint8 within "/ek_certificate"`},
		{"invalid UTF-8 in device.hostname", func(t *testing.T) []byte {
			return splice(t, marshal(t, validBegin(), func(r *api.BeginRequest) { r.Device.Hostname = "ab" }), `"hostname":"a`, "\xff")
		}, `invalid UTF-8 within "/device/hostname"`},
		{"invalid UTF-8 in device.agent_version", func(t *testing.T) []byte {
			return splice(t, valid(t), `"agent_version":"`, "\xc3\x28")
		}, `invalid UTF-8 within "/device/agent_version"`},
		{"invalid UTF-8 in a key", func(t *testing.T) []byte { return splice(t, valid(t), `"device":{`, "\"\xfe\":1,") }, `invalid UTF-8 within "/device"`},
		{"invalid UTF-8 in a top-level key", func(t *testing.T) []byte { return splice(t, valid(t), `{`, "\"\xfe\":1,") }, "invalid JSON: jsontext: invalid UTF-8 after offset 2"},
		{"UTF-16 surrogate encoded in UTF-8", func(t *testing.T) []byte {
			return splice(t, marshal(t, validBegin(), func(r *api.BeginRequest) { r.Device.Hostname = "ab" }), `"hostname":"a`, "\xed\xa0\x80")
		}, `invalid UTF-8 within "/device/hostname"`},
		// encoding/json (v1) turned a lone escaped surrogate into U+FFFD.
		{"lone surrogate escape in device.hostname", func(t *testing.T) []byte {
			return splice(t, marshal(t, validBegin(), func(r *api.BeginRequest) { r.Device.Hostname = "ab" }), `"hostname":"a`, `\ud800`)
		}, `invalid surrogate pair`},

		// Required fields.
		{"empty object", raw(`{}`), "ek_public is required"},
		{"null", raw(`null`), "ek_public is required"},
		{"missing ek_public", with(func(r *api.BeginRequest) { r.EKPublic = nil }), "ek_public is required"},
		{"empty ek_public", func(t *testing.T) []byte {
			return replace(t, marshal(t, validBegin(), func(r *api.BeginRequest) { r.EKPublic = nil }), `"ek_public":null`, `"ek_public":""`)
		}, "ek_public is required"},
		{"missing ak", func(t *testing.T) []byte {
			b := marshal(t, validBegin(), nil)
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			delete(m, "ak")
			return marshal(t, &m, nil)
		}, "ak.public is required"},
		{"missing ak.public", with(func(r *api.BeginRequest) { r.AK.Public = nil }), "ak.public is required"},
		{"missing ak.create_data", with(func(r *api.BeginRequest) { r.AK.CreateData = nil }), "ak.create_data is required"},
		{"missing ak.create_attestation", with(func(r *api.BeginRequest) { r.AK.CreateAttestation = nil }), "ak.create_attestation is required"},
		{"missing ak.create_signature", with(func(r *api.BeginRequest) { r.AK.CreateSignature = nil }), "ak.create_signature is required"},

		// Sizes.
		{"oversized ek_public", with(func(r *api.BeginRequest) { r.EKPublic = blobOf(api.MaxBlobBytes+1, 0) }), fmt.Sprintf("ek_public is %d bytes, limit is %d", api.MaxBlobBytes+1, api.MaxBlobBytes)},
		{"oversized ek_certificate", with(func(r *api.BeginRequest) { r.EKCertificate = blobOf(api.MaxBlobBytes+1, 0) }), "ek_certificate is 16385 bytes"},
		{"oversized ak.public", with(func(r *api.BeginRequest) { r.AK.Public = blobOf(api.MaxBlobBytes+1, 0) }), "ak.public is 16385 bytes"},
		{"oversized ak.create_signature", with(func(r *api.BeginRequest) { r.AK.CreateSignature = blobOf(api.MaxBlobBytes+1, 0) }), "ak.create_signature is 16385 bytes"},
		{"oversized device.hostname", with(func(r *api.BeginRequest) { r.Device.Hostname = strings.Repeat("h", api.MaxDeviceInfoLen+1) }), "device.hostname is 257 bytes, limit is 256"},
		{"oversized device.agent_version", with(func(r *api.BeginRequest) { r.Device.AgentVersion = strings.Repeat("v", api.MaxDeviceInfoLen+1) }), "device.agent_version is 257 bytes"},

		// Device info text.
		{"NUL in device.hostname", with(func(r *api.BeginRequest) { r.Device.Hostname = "a\x00b" }), "device.hostname contains control character U+0000"},
		{"newline in device.hostname", with(func(r *api.BeginRequest) { r.Device.Hostname = "host\nINFO forged log line" }), "device.hostname contains control character U+000A"},
		{"ESC in device.hostname", with(func(r *api.BeginRequest) { r.Device.Hostname = "\x1b[31mred" }), "device.hostname contains control character U+001B"},
		{"DEL in device.hostname", with(func(r *api.BeginRequest) { r.Device.Hostname = "a\x7f" }), "device.hostname contains control character U+007F"},
		{"C1 CSI in device.hostname", with(func(r *api.BeginRequest) { r.Device.Hostname = "a\u009b31m" }), "device.hostname contains control character U+009B"},
		{"tab in device.agent_version", with(func(r *api.BeginRequest) { r.Device.AgentVersion = "v1\t2" }), "device.agent_version contains control character U+0009"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got api.BeginRequest
			wantBadRequest(t, api.Unmarshal(tt.body(t), &got), tt.want)
		})
	}
}

func TestUnmarshalFinishRefusals(t *testing.T) {
	valid := func(t *testing.T) []byte { return marshal(t, validFinish(), nil) }
	with := func(mut func(*api.FinishRequest)) func(*testing.T) []byte {
		return func(t *testing.T) []byte { return marshal(t, validFinish(), mut) }
	}
	for _, tt := range []struct {
		name string
		body func(*testing.T) []byte
		want string
	}{
		// Strict JSON.
		{"unknown top-level field", func(t *testing.T) []byte { return splice(t, valid(t), `{`, `"nonce":"AA==",`) }, `unknown object member name "nonce"`},
		{"unknown field in pcrs[0]", func(t *testing.T) []byte { return splice(t, valid(t), `"pcrs":[{`, `"bank":"sha1",`) }, `unknown object member name "bank" within "/pcrs/0"`},
		{"duplicate session_id", func(t *testing.T) []byte {
			return splice(t, valid(t), `{`, `"session_id":"ffffffffffffffffffffffffffffffff",`)
		}, `duplicate object member name "session_id"`},
		{"duplicate key in quote", func(t *testing.T) []byte { return splice(t, valid(t), `"quote":{`, `"signature":"AQ==",`) }, `duplicate object member name "signature" within "/quote"`},
		{"duplicate key in pcrs[1]", func(t *testing.T) []byte { return splice(t, valid(t), `{"index":7,`, `"index":6,`) }, `duplicate object member name "index" within "/pcrs/1"`},
		{"key in pcrs[1] differing only in case is unknown", func(t *testing.T) []byte { return splice(t, valid(t), `{"index":7,`, `"Index":6,`) }, `unknown object member name "Index" within "/pcrs/1"`},
		{"trailing data", func(t *testing.T) []byte { return append(valid(t), "\n{}\n"...) }, "invalid character '{' after top-level value"},
		{"nesting in pcrs", func(t *testing.T) []byte {
			return splice(t, valid(t), `"pcrs":[`, nested(deepNesting)+`,`)
		}, `unmarshal JSON array into Go api.PCR within "/pcrs/0"`},
		{"invalid UTF-8 in session_id", func(t *testing.T) []byte {
			return splice(t, valid(t), `"session_id":"`, "\xff")
		}, `invalid UTF-8 within "/session_id"`},

		// Session ID.
		{"empty session_id", with(func(r *api.FinishRequest) { r.SessionID = "" }), "session_id must be 32 hex characters, got 0"},
		{"short session_id", with(func(r *api.FinishRequest) { r.SessionID = validSessionID[:31] }), "session_id must be 32 hex characters, got 31"},
		{"long session_id", with(func(r *api.FinishRequest) { r.SessionID = validSessionID + "0" }), "session_id must be 32 hex characters, got 33"},
		{"non-hex session_id", with(func(r *api.FinishRequest) { r.SessionID = "zz" + validSessionID[2:] }), "session_id must be lowercase hex"},
		{"upper-case session_id", with(func(r *api.FinishRequest) { r.SessionID = strings.ToUpper(validSessionID) }), "session_id must be lowercase hex"},
		{"session_id with a space", with(func(r *api.FinishRequest) { r.SessionID = " " + validSessionID[1:] }), "session_id must be lowercase hex"},

		// Activation proof.
		{"missing activation_proof", with(func(r *api.FinishRequest) { r.ActivationProof = nil }), "activation_proof must be 32 bytes, got 0"},
		{"short activation_proof", with(func(r *api.FinishRequest) { r.ActivationProof = r.ActivationProof[:31] }), "activation_proof must be 32 bytes, got 31"},
		{"long activation_proof", with(func(r *api.FinishRequest) { r.ActivationProof = append(r.ActivationProof, 0) }), "activation_proof must be 32 bytes, got 33"},

		// Required blobs.
		{"missing quote.quote", with(func(r *api.FinishRequest) { r.Quote.Quote = nil }), "quote.quote is required"},
		{"missing quote.signature", with(func(r *api.FinishRequest) { r.Quote.Signature = nil }), "quote.signature is required"},
		{"missing key.public", with(func(r *api.FinishRequest) { r.Key.Public = nil }), "key.public is required"},
		{"missing key.create_attestation", with(func(r *api.FinishRequest) { r.Key.CreateAttestation = nil }), "key.create_attestation is required"},
		{"missing key.create_signature", with(func(r *api.FinishRequest) { r.Key.CreateSignature = nil }), "key.create_signature is required"},
		{"missing csr", with(func(r *api.FinishRequest) { r.CSR = nil }), "csr is required"},
		{"oversized csr", with(func(r *api.FinishRequest) { r.CSR = blobOf(api.MaxBlobBytes+1, 0) }), "csr is 16385 bytes, limit is 16384"},
		{"oversized quote.quote", with(func(r *api.FinishRequest) { r.Quote.Quote = blobOf(api.MaxBlobBytes+1, 0) }), "quote.quote is 16385 bytes"},

		// PCRs.
		{"no pcrs", with(func(r *api.FinishRequest) { r.PCRs = nil }), "pcrs must list 1 to 24 values, got 0"},
		{"too many pcrs", with(func(r *api.FinishRequest) {
			r.PCRs = nil
			for i := range api.MaxPCRs + 1 {
				r.PCRs = append(r.PCRs, api.PCR{Index: i, Digest: blobOf(sha256.Size, 0)})
			}
		}), "pcrs must list 1 to 24 values, got 25"},
		{"negative pcr index", with(func(r *api.FinishRequest) { r.PCRs[1].Index = -1 }), "pcrs[1].index -1 is out of range 0..23"},
		{"pcr index MaxPCRs", with(func(r *api.FinishRequest) { r.PCRs[2].Index = api.MaxPCRs }), "pcrs[2].index 24 is out of range 0..23"},
		{"huge pcr index", with(func(r *api.FinishRequest) { r.PCRs[0].Index = 1 << 40 }), "pcrs[0].index 1099511627776 is out of range"},
		{"fractional pcr index", func(t *testing.T) []byte { return splice(t, valid(t), `{"index":7`, `.5`) }, `unmarshal JSON number 7.5 into Go int within "/pcrs/1/index"`},
		{"duplicated pcr index", with(func(r *api.FinishRequest) { r.PCRs[2].Index = 0 }), "pcrs[2]: PCR 0 listed twice"},
		{"short pcr digest (SHA-1)", with(func(r *api.FinishRequest) { r.PCRs[1].Digest = blobOf(20, 0) }), "pcrs[1].digest must be a 32-byte SHA-256 value, got 20 bytes"},
		{"long pcr digest (SHA-384)", with(func(r *api.FinishRequest) { r.PCRs[0].Digest = blobOf(48, 0) }), "pcrs[0].digest must be a 32-byte SHA-256 value, got 48 bytes"},
		{"missing pcr digest", with(func(r *api.FinishRequest) { r.PCRs[0].Digest = nil }), "pcrs[0].digest must be a 32-byte SHA-256 value, got 0 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got api.FinishRequest
			wantBadRequest(t, api.Unmarshal(tt.body(t), &got), tt.want)
		})
	}
}

func TestDecode(t *testing.T) {
	body := marshal(t, validBegin(), nil)
	n := int64(len(body))
	for _, tt := range []struct {
		name  string
		r     func() *bytes.Reader
		limit int64
		want  string // "" means accepted
	}{
		{"at limit", func() *bytes.Reader { return bytes.NewReader(body) }, n, ""},
		{"under limit", func() *bytes.Reader { return bytes.NewReader(body) }, api.MaxRequestBytes, ""},
		{"one byte over limit", func() *bytes.Reader { return bytes.NewReader(body) }, n - 1, fmt.Sprintf("body exceeds %d bytes", n-1)},
		{"padding pushes it over MaxRequestBytes", func() *bytes.Reader {
			return bytes.NewReader(append(append([]byte{}, body...), bytes.Repeat([]byte(" "), api.MaxRequestBytes)...))
		}, api.MaxRequestBytes, fmt.Sprintf("body exceeds %d bytes", api.MaxRequestBytes)},
		{"zero limit", func() *bytes.Reader { return bytes.NewReader(body) }, 0, "body exceeds 0 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got api.BeginRequest
			err := api.Decode(tt.r(), tt.limit, &got)
			if tt.want != "" {
				wantBadRequest(t, err, tt.want)
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if diff := cmp.Diff(validBegin(), &got); diff != "" {
				t.Errorf("Decode mismatch (-want, +got):\n%s", diff)
			}
		})
	}

	t.Run("reader fails", func(t *testing.T) {
		boom := errors.New("connection reset")
		var got api.BeginRequest
		wantBadRequest(t, api.Decode(iotest.ErrReader(boom), api.MaxRequestBytes, &got), "reading body: connection reset")
	})
	t.Run("does not read past limit+1", func(t *testing.T) {
		// A client streaming forever must not make the server buffer it.
		r := &countingReader{}
		var got api.BeginRequest
		wantBadRequest(t, api.Decode(r, 1024, &got), "body exceeds 1024 bytes")
		if r.n > 1025 {
			t.Errorf("Decode read %d bytes with limit 1024", r.n)
		}
	})
}

// countingReader is an endless stream of spaces that counts what was read.
type countingReader struct{ n int64 }

func (r *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	r.n += int64(len(p))
	return len(p), nil
}

// failingValidator returns a plain error from Validate.
type failingValidator struct {
	A int `json:"a"`
}

func (failingValidator) Validate() error { return errors.New("a must be positive") }

func TestUnmarshalWrapsPlainValidateErrors(t *testing.T) {
	var v failingValidator
	wantBadRequest(t, api.Unmarshal([]byte(`{"a":0}`), &v), "a must be positive")
}

// The decoder's error quotes member names the client chose; the message
// stays bounded however long they are.
func TestUnmarshalBoundsErrorText(t *testing.T) {
	name := strings.Repeat("x", 10000)
	var got api.BeginRequest
	err := api.Unmarshal([]byte(`{"`+name+`":1}`), &got)
	wantBadRequest(t, err, `unknown object member name "xxxxxxxx`)
	var ae *api.Error
	if errors.As(err, &ae) && len(ae.Message) > 300 {
		t.Errorf("message is %d bytes, want it bounded: %.80q…", len(ae.Message), ae.Message)
	}
}

// BenchmarkUnmarshal decodes and validates the typical begin and finish
// requests, as the server does for every enrollment.
func BenchmarkUnmarshal(b *testing.B) {
	b.Run("begin", func(b *testing.B) {
		body := marshal(b, validBegin(), nil)
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if err := api.Unmarshal(body, new(api.BeginRequest)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("finish", func(b *testing.B) {
		body := marshal(b, validFinish(), nil)
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if err := api.Unmarshal(body, new(api.FinishRequest)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
