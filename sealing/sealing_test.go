package sealing_test

import (
	"bytes"
	"errors"
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
