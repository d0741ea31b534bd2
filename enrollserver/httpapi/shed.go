package httpapi

import (
	"net/http"

	"github.com/edgeenroll/edgeenroll/api"
)

// DefaultMaxInFlight bounds enrollment requests (begin, finish) handled at
// once. One enrollment costs a few milliseconds of CPU; beyond a few
// hundred in flight a 2-core server only queues, growing memory and every
// device's latency, so it answers 429 with Retry-After instead and devices
// back off with jitter.
const DefaultMaxInFlight = 256

// shedRetryAfter is the Retry-After, in seconds, of a shed request.
const shedRetryAfter = 1

// shedder admits at most cap(slots) requests at once and refuses the rest
// at once, without queueing.
type shedder struct {
	slots chan struct{}
}

func newShedder(max int) *shedder {
	if max <= 0 {
		max = DefaultMaxInFlight
	}
	return &shedder{slots: make(chan struct{}, max)}
}

func (s *shedder) wrap(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case s.slots <- struct{}{}:
			defer func() { <-s.slots }()
			next(w, r)
		default:
			writeError(w, correlationID(r), &api.Error{Code: api.CodeBusy,
				Message: "server busy; retry after the Retry-After delay", RetryAfterSeconds: shedRetryAfter})
		}
	}
}
