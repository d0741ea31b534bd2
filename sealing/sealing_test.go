package sealing_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/sealing"
)

func TestSealOpen(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	key, err := sealing.Key(secret, "s1")
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte(`{"certificate_chain":["..."]}`)
	sealed, err := sealing.Seal(key, "s1", "m1", msg)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sealing.Open(key, "s1", "m1", sealed)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	otherKey, _ := sealing.Key(bytes.Repeat([]byte{8}, 32), "s1")
	otherSession, _ := sealing.Key(secret, "s2")
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name             string
		key              []byte
		session, message string
		sealed           []byte
	}{
		{"tampered", key, "s1", "m1", flipped},
		{"another device's secret", otherKey, "s1", "m1", sealed},
		{"key of another session", otherSession, "s1", "m1", sealed},
		{"moved to another session", key, "s2", "m1", sealed},
		{"moved to another message", key, "s1", "m2", sealed},
		{"truncated", key, "s1", "m1", sealed[:10]},
		{"empty", key, "s1", "m1", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := sealing.Open(tc.key, tc.session, tc.message, tc.sealed); !errors.Is(err, sealing.ErrOpen) {
				t.Errorf("got %v, want ErrOpen", err)
			}
		})
	}
	if _, err := sealing.Key(make([]byte, 8), "s1"); err == nil {
		t.Error("short secret accepted")
	}
}

// TestLongIDsRefused: the AAD length-prefixes each ID in two bytes, so a
// 65,536-byte ID would wrap its prefix and let a payload sealed for
// (65536-byte session, "") open as ("", 65536-byte message). IDs that long
// are refused on both sides.
func TestLongIDsRefused(t *testing.T) {
	key := bytes.Repeat([]byte{7}, sealing.KeySize)
	z := bytes.Repeat([]byte{'z'}, 1<<16-2)
	sessA := string(append([]byte{0, 0}, z...))
	msgB := string(append(bytes.Clone(z), 0, 0))
	if _, err := sealing.Seal(key, sessA, "", []byte("chain and bundle")); err == nil {
		t.Error("sealed for a 65,536-byte session ID")
	}
	sealed, err := sealing.Seal(key, "", string(z), []byte("chain and bundle"))
	if err != nil {
		t.Fatalf("a 65,534-byte message ID: %v", err)
	}
	// Refused for its length, before any decryption.
	if _, err := sealing.Open(key, "", msgB, sealed); !errors.Is(err, sealing.ErrOpen) || !strings.Contains(err.Error(), "at most 65535") {
		t.Errorf("open with a 65,536-byte message ID: %v, want refused for its length", err)
	}
}
