package device

import (
	"math"
	"testing"
	"time"
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
