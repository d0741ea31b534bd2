package admission

import (
	"errors"
	"fmt"
	"github.com/edgeenroll/edgeenroll/api"
	"time"
)

// ErrRefused matches every *RefusedError with errors.Is.
var ErrRefused = errors.New("admission: refused")

// ErrClosed: the Controller was closed; nothing more is admitted.
var ErrClosed = errors.New("admission: closed")

// Reason says why a request was refused.
type Reason int

// Reasons of a RefusedError.
const (
	// ReasonRateLimited: the client's token bucket is empty. Retry-After
	// is when it holds a token again.
	ReasonRateLimited Reason = iota + 1
	// ReasonQueueFull: every slot is busy and the queue is full of
	// requests of the same or higher priority (or of a fair share of this
	// client's). Retry-After is the estimated drain time of the queue.
	ReasonQueueFull
	// ReasonDisplaced: the request was queued, then pushed out of a full
	// queue by one of higher priority, or by another client's request
	// when this client held more than its share.
	ReasonDisplaced
	// ReasonQueueTimeout: the request waited Options.MaxWait without a
	// slot.
	ReasonQueueTimeout
)

func (r Reason) String() string {
	switch r {
	case ReasonRateLimited:
		return "rate_limited"
	case ReasonQueueFull:
		return "queue_full"
	case ReasonDisplaced:
		return "displaced"
	case ReasonQueueTimeout:
		return "queue_timeout"
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// RefusedError is a refusal: the adapter answers busy (HTTP 429) with
// RetryAfter, which is whole seconds within [MinRetryAfter, MaxRetryAfter].
type RefusedError struct {
	Reason     Reason
	Class      Class
	RetryAfter time.Duration
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("admission: %s refused (%s); retry after %s", e.Class, e.Reason, e.RetryAfter)
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// RetryAfterSeconds is RetryAfter in whole seconds, for the Retry-After
// header and api.Error.RetryAfterSeconds.
func (e *RefusedError) RetryAfterSeconds() int { return int(e.RetryAfter / time.Second) }

// APIError is the busy answer a transport gives for err, a refusal of
// Enter or Ticket.Wait: CodeBusy with the refusal's Retry-After, or, once
// the controller is closed (shutting down) or the client gave up while
// queued, CodeUnavailable. retryHint tells the client where the delay is
// ("the Retry-After delay" over HTTPS, "retry_after_seconds" over MQTT).
func APIError(err error, retryHint string) *api.Error {
	var re *RefusedError
	switch {
	case errors.As(err, &re) && re.Reason == ReasonRateLimited:
		return &api.Error{Code: api.CodeBusy, RetryAfterSeconds: re.RetryAfterSeconds(),
			Message: "too many requests from this client; retry after " + retryHint}
	case errors.As(err, &re):
		return &api.Error{Code: api.CodeBusy, RetryAfterSeconds: re.RetryAfterSeconds(),
			Message: "server busy (" + re.Reason.String() + "); retry after " + retryHint}
	}
	return &api.Error{Code: api.CodeUnavailable, RetryAfterSeconds: int(MinRetryAfter / time.Second),
		Message: "server shutting down; retry later"}
}
