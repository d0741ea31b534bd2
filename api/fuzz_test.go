package api_test

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/edgeenroll/edgeenroll/api"
)

// The fuzz targets check the invariant "parse then validate never
// disagree": Unmarshal never panics, refuses only with a CodeBadRequest
// *api.Error, and whatever it accepts passes Validate, survives
// json.Marshal + Unmarshal unchanged, and is read the same by the lenient
// encoding/json (v1) decoder that clients use: strictness only refuses,
// it never changes what an accepted message means. More seeds live in
// testdata/fuzz/<FuzzName>/.

func FuzzUnmarshalBegin(f *testing.F) {
	for _, s := range beginSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(checkUnmarshal[api.BeginRequest])
}

func FuzzUnmarshalFinish(f *testing.F) {
	for _, s := range finishSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(checkUnmarshal[api.FinishRequest])
}

func FuzzUnmarshalPreregister(f *testing.F) {
	for _, s := range preregisterSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(checkUnmarshal[api.PreregisterRequest])
}

// checkUnmarshal is the shared fuzz invariant.
func checkUnmarshal[T any, PT interface {
	*T
	api.Validator
}](t *testing.T, body []byte) {
	got := PT(new(T))
	if err := api.Unmarshal(body, got); err != nil {
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeBadRequest {
			t.Fatalf("Unmarshal refused with %T %v; want an *api.Error with CodeBadRequest", err, err)
		}
		return
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("Unmarshal accepted %q but Validate refuses the result: %v", body, err)
	}
	lenient := PT(new(T))
	if err := json.Unmarshal(body, lenient); err != nil {
		t.Fatalf("Unmarshal accepted %q but encoding/json refuses it: %v", body, err)
	}
	if diff := cmp.Diff(got, lenient); diff != "" {
		t.Fatalf("Unmarshal and encoding/json read %q differently (-strict, +lenient):\n%s", body, diff)
	}
	again, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("json.Marshal of an accepted message: %v", err)
	}
	back := PT(new(T))
	if err := api.Unmarshal(again, back); err != nil {
		t.Fatalf("Unmarshal accepted %q but refuses its re-encoding %q: %v", body, again, err)
	}
	// "ek_certificate":"" decodes to an empty slice and re-encodes to
	// nothing (omitempty), which decodes to nil: the same message.
	if diff := cmp.Diff(got, back, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("re-encoding changed the message (-first, +second):\n%s", diff)
	}
}

func beginSeeds(t testing.TB) [][]byte {
	valid := marshal(t, validBegin(), nil)
	return [][]byte{
		valid,
		marshal(t, validBegin(), func(r *api.BeginRequest) { r.EKCertificate = nil; r.Device = api.DeviceInfo{} }),
		marshal(t, validBegin(), func(r *api.BeginRequest) { r.Device.Hostname = "gerät-✓" }),
		[]byte(`{"ek_public":"AQ==","ak":{"public":"Ag==","create_data":"Aw==","create_attestation":"BA==","create_signature":"BQ=="}}`),
		[]byte(`{"EK_PUBLIC":"AQ==","Ak":{"PUBLIC":"Ag==","create_data":"Aw==","create_attestation":"BA==","create_signature":"BQ=="},"ek_certificate":""}`),
		[]byte(`{"ek_public":"AQ==","ek_public":"AQ==","ak":{"public":"Ag==","create_data":"Aw==","create_attestation":"BA==","create_signature":"BQ=="}}`),
		[]byte(`{"ek_public":"AQ==","ak":{"public":"Ag==","create_data":"Aw==","create_attestation":"BA==","create_signature":"BQ=="},"device":{"hostname":"a\u0000"}}`),
		[]byte(`{"ek_public":"AQ==","ak":{"public":"Ag==","create_data":"Aw==","create_attestation":"BA==","create_signature":"BQ=="},"device":{"hostname":"\ud800"}}`),
		[]byte("{\"ek_public\":\"AQ==\",\"ak\":{\"public\":\"Ag==\",\"create_data\":\"Aw==\",\"create_attestation\":\"BA==\",\"create_signature\":\"BQ==\"},\"device\":{\"hostname\":\"\xff\"}}"),
		append(valid, "{}"...),
		[]byte(strings.Repeat("[", 20) + strings.Repeat("]", 20)),
		[]byte(`{"ek_public":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`),
		[]byte(`{"` + strings.Repeat("x", 1000) + `":1}`),
		[]byte(`{}`),
		[]byte(`null`),
		[]byte(``),
	}
}

func finishSeeds(t testing.TB) [][]byte {
	all := marshal(t, validFinish(), func(r *api.FinishRequest) {
		r.PCRs = nil
		for i := range api.MaxPCRs {
			r.PCRs = append(r.PCRs, api.PCR{Index: i, Digest: blobOf(sha256.Size, byte(i))})
		}
	})
	return [][]byte{
		marshal(t, validFinish(), nil),
		marshal(t, validFinish(), func(r *api.FinishRequest) { r.PCRs = r.PCRs[:1] }),
		all,
		marshal(t, validFinish(), func(r *api.FinishRequest) { r.PCRs[1].Index = r.PCRs[0].Index }),
		marshal(t, validFinish(), func(r *api.FinishRequest) { r.PCRs[0].Index = -1 }),
		marshal(t, validFinish(), func(r *api.FinishRequest) { r.PCRs[0].Digest = r.PCRs[0].Digest[:20] }),
		marshal(t, validFinish(), func(r *api.FinishRequest) { r.SessionID = strings.ToUpper(r.SessionID) }),
		marshal(t, validFinish(), func(r *api.FinishRequest) { r.ActivationProof = r.ActivationProof[:31] }),
		[]byte(`{"session_id":"0123456789abcdef0123456789abcdef","pcrs":[{"index":0,"index":1}]}`),
		[]byte(`{"pcrs":[{"index":1e2},{"index":-0},{"index":99999999999999999999}]}`),
		[]byte(`{}`),
	}
}

func preregisterSeeds(t testing.TB) [][]byte {
	return [][]byte{
		marshal(t, validPreregister(), nil),
		marshal(t, &api.PreregisterRequest{Devices: []api.Preregistration{{DeviceID: deviceID(0)}}}, nil),
		marshal(t, validPreregister(), func(r *api.PreregisterRequest) { r.Devices[2] = r.Devices[0] }),
		marshal(t, validPreregister(), func(r *api.PreregisterRequest) { r.Devices[1].Serial = "SN\u0085" }),
		[]byte(`{"devices":[{"device_id":"` + deviceID(0) + `","DEVICE_ID":"` + deviceID(1) + `"}]}`),
		[]byte(`{"devices":[]}`),
		[]byte(`{"devices":null}`),
		[]byte(`{"devices":[{}]}`),
	}
}
