package attest_test

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/edgeenroll/edgeenroll/attest"
)

func TestReasonString(t *testing.T) {
	seen := map[string]bool{}
	for r := attest.ReasonMalformed; r <= attest.ReasonCSRInvalid; r++ {
		s := r.String()
		if s == "" || seen[s] || s == fmt.Sprintf("Reason(%d)", int(r)) {
			t.Errorf("Reason %d has name %q (empty, duplicate or missing)", int(r), s)
		}
		seen[s] = true
	}
	if got := attest.Reason(99).String(); got != "Reason(99)" {
		t.Errorf("unknown reason = %q, want Reason(99)", got)
	}
	if got := attest.Reason(0).String(); got != "Reason(0)" {
		t.Errorf("zero reason = %q, want Reason(0)", got)
	}
}

func TestVerificationError(t *testing.T) {
	err := fmt.Errorf("finish: %w", &attest.VerificationError{Reason: attest.ReasonQuoteNonce, Detail: "quote was made over a different nonce", Err: io.ErrUnexpectedEOF})
	if got, want := err.Error(), "finish: quote nonce: quote was made over a different nonce: unexpected EOF"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Error("Unwrap does not reach the underlying error")
	}
	if !errors.Is(err, &attest.VerificationError{Reason: attest.ReasonQuoteNonce}) {
		t.Error("errors.Is does not match on the reason")
	}
	if errors.Is(err, &attest.VerificationError{Reason: attest.ReasonQuoteSignature}) {
		t.Error("errors.Is matched another reason")
	}
	if got := attest.ReasonOf(err); got != attest.ReasonQuoteNonce {
		t.Errorf("ReasonOf = %v", got)
	}
	if got := attest.ReasonOf(io.EOF); got != 0 {
		t.Errorf("ReasonOf(io.EOF) = %v, want 0", got)
	}
	if got := (&attest.VerificationError{Reason: attest.ReasonMalformed}).Error(); got != "malformed" {
		t.Errorf("bare Error() = %q", got)
	}
}
