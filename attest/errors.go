package attest

import (
	"errors"
	"fmt"
)

// Reason is why a piece of TPM evidence was refused. Reasons are stable: the
// enrollment server maps them to wire error codes and metric labels.
type Reason int

// Rejection reasons, grouped by the verification step that reports them.
const (
	// ReasonMalformed: undecodable or out-of-bounds input (any step).
	ReasonMalformed Reason = iota + 1

	// VerifyEKCertificate, ParseEKPublic, NewActivationChallenge.

	// ReasonEKUntrusted: the EK certificate does not chain to a configured
	// root, lacks the EK extended key usage, carries an unexpected critical
	// extension or a malformed TCG subjectAltName, or is expired.
	ReasonEKUntrusted
	// ReasonEKMismatch: the EK certificate's public key differs from the
	// EK public key sent.
	ReasonEKMismatch
	// ReasonEKWeak: the EK key type or size is not acceptable.
	ReasonEKWeak

	// VerifyAKParameters, ParseAKPublic.

	// ReasonAKInvalid: the AK is not a restricted, fixedTPM, TPM-generated
	// signing key, or its creation attestation does not verify.
	ReasonAKInvalid

	// VerifyActivationProof.

	// ReasonActivationFailed: the credential activation proof is wrong,
	// so the AK was not shown to live in the EK's TPM.
	ReasonActivationFailed

	// VerifyQuote.

	// ReasonQuoteSignature: the quote is not signed by the AK.
	ReasonQuoteSignature
	// ReasonQuoteNonce: the quote's extraData differs from the expected
	// nonce, or the nonce is too short or too long.
	ReasonQuoteNonce
	// ReasonPCRMismatch: the reported PCR values do not hash to the
	// quoted PCR digest, a reported PCR is not quoted, the selection is
	// not the SHA-256 bank, or a required PCR is not in the selection.
	ReasonPCRMismatch

	// VerifyKeyCertification.

	// ReasonKeyNotCertified: the key certification is invalid or not
	// signed by the AK, or the key is not a TPM-resident (fixedTPM,
	// fixedParent, sensitiveDataOrigin), unrestricted signing key.
	ReasonKeyNotCertified

	// VerifyCSR.

	// ReasonCSRKeyMismatch: the CSR's public key is not the certified key.
	ReasonCSRKeyMismatch
	// ReasonCSRInvalid: the CSR is unparsable or its signature is invalid.
	ReasonCSRInvalid
)

var reasonNames = map[Reason]string{
	ReasonMalformed:        "malformed",
	ReasonEKUntrusted:      "ek untrusted",
	ReasonEKMismatch:       "ek mismatch",
	ReasonEKWeak:           "ek weak",
	ReasonAKInvalid:        "ak invalid",
	ReasonActivationFailed: "activation failed",
	ReasonQuoteSignature:   "quote signature",
	ReasonQuoteNonce:       "quote nonce",
	ReasonPCRMismatch:      "pcr mismatch",
	ReasonKeyNotCertified:  "key not certified",
	ReasonCSRKeyMismatch:   "csr key mismatch",
	ReasonCSRInvalid:       "csr invalid",
}

// String returns a short lowercase name, or "Reason(n)" for unknown values.
func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// VerificationError is the verdict of a failed check: every refusal of
// evidence by this package is a *VerificationError. Match it with errors.As,
// or errors.Is(err, &VerificationError{Reason: r}) to test the reason alone.
// Errors that are not a *VerificationError are faults of the caller or the
// server (bad arguments, random source failure), not of the evidence.
type VerificationError struct {
	Reason Reason
	// Detail says which check failed, in words for an operator.
	Detail string
	// Err is the underlying error, if any.
	Err error
}

// Error returns "<reason>: <detail>: <err>", leaving out empty parts.
func (e *VerificationError) Error() string {
	s := e.Reason.String()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the underlying error.
func (e *VerificationError) Unwrap() error { return e.Err }

// Is reports whether target is a *VerificationError with the same Reason.
func (e *VerificationError) Is(target error) bool {
	t, ok := target.(*VerificationError)
	return ok && t.Reason == e.Reason
}

// ReasonOf returns the Reason of the first *VerificationError in err's
// chain, or 0 if there is none.
func ReasonOf(err error) Reason {
	var ve *VerificationError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return 0
}

// reject builds a verdict without an underlying error.
func reject(r Reason, format string, args ...any) error {
	return &VerificationError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// rejectErr builds a verdict wrapping err.
func rejectErr(r Reason, err error, format string, args ...any) error {
	return &VerificationError{Reason: r, Detail: fmt.Sprintf(format, args...), Err: err}
}
