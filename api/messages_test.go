package api_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
)

func TestValidDeviceID(t *testing.T) {
	good := deviceID(0)
	for _, tt := range []struct {
		name string
		id   string
		want bool
	}{
		{"sha-256 hex", good, true},
		{"all zeros", strings.Repeat("0", 64), true},
		{"all f", strings.Repeat("f", 64), true},
		{"empty", "", false},
		{"63 characters", good[:63], false},
		{"65 characters", good + "0", false},
		{"upper case", strings.ToUpper(good), false},
		{"one upper-case character", "A" + good[1:], false},
		{"non-hex letter", "g" + good[1:], false},
		{"space", " " + good[1:], false},
		{"64 bytes with a multi-byte rune", good[:62] + "é", false},
		{"sha-1 length", good[:40], false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := api.ValidDeviceID(tt.id); got != tt.want {
				t.Errorf("ValidDeviceID(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func TestValidCorrelationID(t *testing.T) {
	for _, tt := range []struct {
		name string
		id   string
		want bool
	}{
		{"one character", "a", true},
		{"uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", true},
		{"all allowed punctuation", "A.b_C-9", true},
		{"at MaxCorrelationIDLen", strings.Repeat("x", api.MaxCorrelationIDLen), true},
		{"empty", "", false},
		{"over MaxCorrelationIDLen", strings.Repeat("x", api.MaxCorrelationIDLen+1), false},
		{"space", "a b", false},
		{"header injection", "a\r\nSet-Cookie: x", false},
		{"slash", "a/b", false},
		{"colon", "a:b", false},
		{"non-ASCII letter", "é", false},
		{"NUL", "a\x00", false},
		{"invalid UTF-8", "a\xff", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := api.ValidCorrelationID(tt.id); got != tt.want {
				t.Errorf("ValidCorrelationID(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func TestValidateSessionID(t *testing.T) {
	for _, tt := range []struct {
		name string
		id   string
		want string // "" means valid
	}{
		{"lowercase hex", validSessionID, ""},
		{"empty", "", "got 0"},
		{"31 characters", validSessionID[:31], "got 31"},
		{"33 characters", validSessionID + "a", "got 33"},
		{"non-hex", "x" + validSessionID[1:], "must be lowercase hex"},
		{"upper case", strings.ToUpper(validSessionID), "must be lowercase hex"},
		{"32 bytes with a multi-byte rune", validSessionID[:30] + "é", "must be lowercase hex"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := api.ValidateSessionID(tt.id)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("ValidateSessionID(%q) = %v, want nil", tt.id, err)
				}
				return
			}
			wantBadRequest(t, err, tt.want)
		})
	}
}

func TestActivationProof(t *testing.T) {
	secret := []byte("activation secret")
	got := api.ActivationProof(secret, validSessionID)

	t.Run("size", func(t *testing.T) {
		if len(got) != api.ActivationProofSize {
			t.Errorf("len = %d, want %d", len(got), api.ActivationProofSize)
		}
	})
	t.Run("deterministic", func(t *testing.T) {
		if again := api.ActivationProof(bytes.Clone(secret), validSessionID); !bytes.Equal(got, again) {
			t.Errorf("two calls differ: %x, %x", got, again)
		}
	})
	t.Run("golden", func(t *testing.T) {
		// Pins the wire format: HMAC-SHA-256(secret, label || session ID)
		// with label "edgeenroll/v1 activation proof\x00". Agent and
		// server of different versions must agree on it.
		const want = "82c453e37804b7cd71722e269ae85e834eebe674268fa8c14578902a643b09eb"
		if h := hex.EncodeToString(got); h != want {
			t.Errorf("ActivationProof = %s, want %s", h, want)
		}
	})
	t.Run("domain separated", func(t *testing.T) {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(validSessionID))
		if bytes.Equal(got, m.Sum(nil)) {
			t.Error("proof equals a bare HMAC of the session ID: the label is missing")
		}
	})
	for _, tt := range []struct {
		name      string
		secret    []byte
		sessionID string
	}{
		{"other session ID", secret, "f123456789abcdef0123456789abcdef"},
		{"other secret", []byte("activation secreT"), validSessionID},
		{"empty secret", nil, validSessionID},
		// Not secret||0x00: HMAC zero-pads keys, so that is the same key.
		// The server's secret is of fixed size, so this does not matter.
		{"longer secret", append(bytes.Clone(secret), '!'), validSessionID},
		{"empty session ID", secret, ""},
	} {
		t.Run("differs with "+tt.name, func(t *testing.T) {
			other := api.ActivationProof(tt.secret, tt.sessionID)
			if len(other) != api.ActivationProofSize {
				t.Errorf("len = %d, want %d", len(other), api.ActivationProofSize)
			}
			if bytes.Equal(got, other) {
				t.Errorf("proof for %s equals the original %x", tt.name, got)
			}
		})
	}
}

// TestBeginResponseValidate: what a device refuses of a begin answer before
// keeping it or giving it to its TPM.
func TestBeginResponseValidate(t *testing.T) {
	good := func() *api.BeginResponse {
		return &api.BeginResponse{SessionID: strings.Repeat("a", api.SessionIDLen), DeviceID: strings.Repeat("b", 64),
			Challenge: api.EncryptedCredential{Credential: []byte{1}, Secret: []byte{2}},
			Nonce:     make([]byte, api.NonceSize), PCRs: []int{0, 7, 23}, ExpiresAt: time.Now()}
	}
	if err := good().Validate(); err != nil {
		t.Fatalf("a good answer: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*api.BeginResponse)
		want   string
	}{
		{"session ID", func(r *api.BeginResponse) { r.SessionID = "A" }, "session_id"},
		{"device ID", func(r *api.BeginResponse) { r.DeviceID = "x" }, "device_id"},
		{"no credential", func(r *api.BeginResponse) { r.Challenge.Credential = nil }, "challenge.credential"},
		{"huge secret", func(r *api.BeginResponse) { r.Challenge.Secret = make([]byte, api.MaxBlobBytes+1) }, "challenge.secret"},
		{"short nonce", func(r *api.BeginResponse) { r.Nonce = make([]byte, api.MinNonceSize-1) }, "nonce"},
		{"long nonce", func(r *api.BeginResponse) { r.Nonce = make([]byte, api.MaxNonceSize+1) }, "nonce"},
		{"no PCRs", func(r *api.BeginResponse) { r.PCRs = nil }, "pcrs"},
		{"negative PCR", func(r *api.BeginResponse) { r.PCRs = []int{-9} }, "out of range"},
		{"PCR 24", func(r *api.BeginResponse) { r.PCRs = []int{24} }, "out of range"},
		{"PCR twice", func(r *api.BeginResponse) { r.PCRs = []int{3, 3} }, "twice"},
		{"no expiry", func(r *api.BeginResponse) { r.ExpiresAt = time.Time{} }, "expires_at"},
	} {
		r := good()
		tc.change(r)
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %s", tc.name, err, tc.want)
		}
	}
}
