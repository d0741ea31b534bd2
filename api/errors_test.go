package api_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
)

func TestCodePermanent(t *testing.T) {
	for _, tt := range []struct {
		code api.Code
		want bool
	}{
		{api.CodeBadRequest, true},
		{api.CodeEKUntrusted, true},
		{api.CodeNotRegistered, true},
		{api.CodeAKInvalid, true},
		{api.CodeActivationFailed, true},
		{api.CodeQuoteInvalid, true},
		{api.CodeKeyNotCertified, true},
		{api.CodeUnauthenticated, true},
		{api.CodeNotFound, true},
		{api.CodeMethodNotAllowed, true},
		{api.CodeForbidden, true},
		{api.CodeConflict, true},
		// Until an operator re-admits the device.
		{api.CodeDenied, true},
		{api.CodeRevoked, true},
		// A lost or expired session is cured by a new begin.
		{api.CodeNonceUnknownOrUsed, false},
		{api.CodeUnavailable, false},
		{api.CodeInternal, false},
		// Retry after the Retry-After hint.
		{api.CodePendingApproval, false},
		{api.CodeBusy, false},
		// A code this client does not know yet is not retried blindly.
		{api.Code("added_in_v2"), true},
		{api.Code(""), true},
	} {
		t.Run(tt.code.String(), func(t *testing.T) {
			if got := tt.code.Permanent(); got != tt.want {
				t.Errorf("%q.Permanent() = %v, want %v", tt.code, got, tt.want)
			}
		})
	}
}

func TestErrorIs(t *testing.T) {
	err := api.Errorf(api.CodeQuoteInvalid, "quote %d: nonce mismatch", 1)
	for _, tt := range []struct {
		name   string
		err    error
		target error
		want   bool
	}{
		{"same code, no message", err, &api.Error{Code: api.CodeQuoteInvalid}, true},
		{"same code, other message", err, api.Errorf(api.CodeQuoteInvalid, "other"), true},
		{"same code, correlation id", err, &api.Error{Code: api.CodeQuoteInvalid, CorrelationID: "c1"}, true},
		{"wrapped", fmt.Errorf("finishing: %w", err), &api.Error{Code: api.CodeQuoteInvalid}, true},
		{"joined", errors.Join(io.EOF, err), &api.Error{Code: api.CodeQuoteInvalid}, true},
		{"other code", err, &api.Error{Code: api.CodeBadRequest}, false},
		{"empty code", err, &api.Error{}, false},
		{"not an *Error", err, io.EOF, false},
		{"typed nil target", err, (*api.Error)(nil), false},
		{"plain error", io.EOF, &api.Error{Code: api.CodeQuoteInvalid}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := errors.Is(tt.err, tt.target); got != tt.want {
				t.Errorf("errors.Is(%v, %v) = %v, want %v", tt.err, tt.target, got, tt.want)
			}
		})
	}
}

func TestErrorAsAndString(t *testing.T) {
	err := fmt.Errorf("begin: %w", &api.Error{Code: api.CodeUnavailable, Message: "store busy", CorrelationID: "req-1", RetryAfterSeconds: 3})
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("errors.As(%v) found no *api.Error", err)
	}
	if ae.RetryAfterSeconds != 3 || ae.Code.Permanent() {
		t.Errorf("got %+v; want retry after 3 s and a transient code", ae)
	}
	for _, tt := range []struct {
		err  *api.Error
		want string
	}{
		{ae, "unavailable: store busy (correlation id req-1)"},
		{api.Errorf(api.CodeBadRequest, "csr is required"), "bad_request: csr is required"},
	} {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}
