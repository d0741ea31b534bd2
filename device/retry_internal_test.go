package device

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
)

// TestRetryAfterIsCapped: a server's (or a forged) Retry-After is honoured
// up to MaxRetryAfter, never overflows, and a negative one is none.
func TestRetryAfterIsCapped(t *testing.T) {
	for _, tc := range []struct {
		seconds int
		want    time.Duration
	}{
		{-5, 0},
		{0, 0},
		{30, 30 * time.Second},
		{3600, MaxRetryAfter},
		{315360000, MaxRetryAfter}, // ten years
		{math.MaxInt, MaxRetryAfter},
	} {
		if got := retryAfter(tc.seconds); got != tc.want {
			t.Errorf("retryAfter(%d) = %v, want %v", tc.seconds, got, tc.want)
		}
	}
	p := RetryPolicy{Base: time.Millisecond, Max: 10 * time.Millisecond}
	if got := p.backoff(1, 10*365*24*time.Hour); got != MaxRetryAfter {
		t.Errorf("backoff with a ten-year Retry-After = %v, want %v", got, MaxRetryAfter)
	}
	if got := p.backoff(1, 30*time.Second); got != 30*time.Second {
		t.Errorf("backoff with a 30 s Retry-After = %v, want 30s (the server's hint wins over a shorter backoff)", got)
	}
}

// TestMQTTRefusalsAreNotFinal: over MQTT, whose broker relays error
// answers unsealed, revoked and denied are retried rather than believed;
// other permanent codes stay permanent, transient ones transient.
func TestMQTTRefusalsAreNotFinal(t *testing.T) {
	for code, transient := range map[api.Code]bool{
		api.CodeRevoked:       true,
		api.CodeDenied:        true,
		api.CodeBusy:          true,
		api.CodeEKUntrusted:   false,
		api.CodeAKInvalid:     false,
		api.CodeNotRegistered: false,
	} {
		err := mqttError(api.OpBegin, &api.Error{Code: code, Message: "x", RetryAfterSeconds: 7})
		var te *TransientError
		if got := errors.As(err, &te); got != transient {
			t.Errorf("%s: transient %v, want %v", code, got, transient)
		}
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != code {
			t.Errorf("%s: the code is lost: %v", code, err)
		}
	}
}
