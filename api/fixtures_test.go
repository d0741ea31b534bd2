package api_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
)

// blobOf returns n bytes of a recognisable, non-constant pattern.
func blobOf(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i)
	}
	return b
}

// deviceID returns a valid, distinct device ID for i.
func deviceID(i int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "ek %d", i))
	return hex.EncodeToString(h[:])
}

const validSessionID = "0123456789abcdef0123456789abcdef"

func validBegin() *api.BeginRequest {
	return &api.BeginRequest{
		EKPublic:      blobOf(294, 0x30),
		EKCertificate: blobOf(1100, 0x31),
		AK: api.AttestationParameters{
			Public:            blobOf(280, 0x01),
			CreateData:        blobOf(90, 0x02),
			CreateAttestation: blobOf(120, 0x03),
			CreateSignature:   blobOf(262, 0x04),
		},
		Device: api.DeviceInfo{Hostname: "edge-0042.factory.example", AgentVersion: "v1.4.2"},
	}
}

func validFinish() *api.FinishRequest {
	return &api.FinishRequest{
		SessionID:       validSessionID,
		ActivationProof: api.ActivationProof([]byte("activation secret"), validSessionID),
		Quote:           api.Quote{Quote: blobOf(145, 0x05), Signature: blobOf(262, 0x06)},
		PCRs: []api.PCR{
			{Index: 0, Digest: blobOf(sha256.Size, 0x10)},
			{Index: 7, Digest: blobOf(sha256.Size, 0x17)},
			{Index: 23, Digest: blobOf(sha256.Size, 0x27)},
		},
		Key: api.CertificationParameters{
			Public:            blobOf(90, 0x07),
			CreateAttestation: blobOf(130, 0x08),
			CreateSignature:   blobOf(262, 0x09),
		},
		CSR: blobOf(400, 0x0a),
	}
}

func validPreregister() *api.PreregisterRequest {
	return &api.PreregisterRequest{Devices: []api.Preregistration{
		{DeviceID: deviceID(0)},
		{DeviceID: deviceID(1), Serial: "SN-0001", Group: "line-a"},
		{DeviceID: deviceID(2), Serial: "Ünïcode serial ✓", Group: "line-b"},
	}}
}

// marshal encodes v (after mut, when not nil) the way a client would.
func marshal[T any](t testing.TB, v *T, mut func(*T)) []byte {
	t.Helper()
	if mut != nil {
		mut(v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("json.Marshal: %v", err)
	}
	return b
}

// splice returns body with insert placed right after the first occurrence
// of anchor; it fails the test when anchor is missing so a fixture change
// cannot silently turn a refusal case into a no-op.
func splice(t testing.TB, body []byte, anchor, insert string) []byte {
	t.Helper()
	i := bytes.Index(body, []byte(anchor))
	if i < 0 {
		t.Fatalf("anchor %q not in %s", anchor, body)
	}
	i += len(anchor)
	out := append([]byte{}, body[:i]...)
	out = append(out, insert...)
	return append(out, body[i:]...)
}

// replace returns body with the first old replaced by new, failing the
// test when old is missing.
func replace(t testing.TB, body []byte, old, new string) []byte {
	t.Helper()
	if !bytes.Contains(body, []byte(old)) {
		t.Fatalf("%q not in %s", old, body)
	}
	return bytes.Replace(body, []byte(old), []byte(new), 1)
}

// wantBadRequest asserts err is an *api.Error with CodeBadRequest whose
// message contains want.
func wantBadRequest(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted; want a bad_request naming %q", want)
	}
	if !errors.Is(err, &api.Error{Code: api.CodeBadRequest}) {
		t.Errorf("error %v does not match CodeBadRequest", err)
	}
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %T (%v) is not an *api.Error", err, err)
	}
	if !strings.Contains(ae.Message, want) {
		t.Errorf("message %q does not contain %q", ae.Message, want)
	}
}
