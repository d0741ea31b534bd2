package api

import "fmt"

// Code is a stable, machine-readable error code. Codes never change meaning;
// new ones are only added.
type Code string

// Error codes of the enrollment protocol.
const (
	// CodeBadRequest: the message is malformed, oversized or fails
	// validation. Permanent: fix the client.
	CodeBadRequest Code = "bad_request"
	// CodeEKUntrusted: the EK certificate does not chain to a trusted
	// manufacturer root, or does not match the EK public key.
	CodeEKUntrusted Code = "ek_untrusted"
	// CodeNotRegistered: the EK has no trusted certificate and its hash was
	// not pre-registered.
	CodeNotRegistered Code = "not_registered"
	// CodeAKInvalid: the AK creation parameters do not describe a
	// restricted, TPM-generated, non-exportable signing key.
	CodeAKInvalid Code = "ak_invalid"
	// CodeActivationFailed: the credential activation proof is wrong: the
	// AK and EK are not in the same TPM.
	CodeActivationFailed Code = "activation_failed"
	// CodeQuoteInvalid: the quote signature, nonce or PCR digest is wrong.
	CodeQuoteInvalid Code = "quote_invalid"
	// CodeNonceUnknownOrUsed: the session is unknown, expired or already
	// used with different evidence.
	CodeNonceUnknownOrUsed Code = "nonce_unknown_or_used"
	// CodeKeyNotCertified: the TPM key was not certified by this AK, or
	// the CSR key is not the certified key.
	CodeKeyNotCertified Code = "key_not_certified"
	// CodeUnauthenticated: the call needs a valid device certificate.
	CodeUnauthenticated Code = "unauthenticated"
	// CodeNotFound: no such path.
	CodeNotFound Code = "not_found"
	// CodeMethodNotAllowed: wrong HTTP method.
	CodeMethodNotAllowed Code = "method_not_allowed"
	// CodePendingApproval: the device is known but waits for an operator
	// to approve it; retry after the Retry-After hint, with no restart.
	CodePendingApproval Code = "pending_approval"
	// CodeDenied: an operator denied the device. Permanent until an
	// operator re-admits it.
	CodeDenied Code = "denied"
	// CodeRevoked: the device's certificates were revoked. Permanent
	// until an operator re-admits it.
	CodeRevoked Code = "revoked"
	// CodeBusy: the server is shedding load (HTTP 429); retry after the
	// Retry-After hint.
	CodeBusy Code = "busy"
	// CodeFirmwareNotApproved: the measured firmware is not an approved
	// reference of the device's group.
	CodeFirmwareNotApproved Code = "firmware_not_approved"
	// CodeSecureBootDisabled: the group requires secure boot and the event
	// log shows it off.
	CodeSecureBootDisabled Code = "secure_boot_disabled"
	// CodeEventLogMismatch: the event log does not replay to the quoted
	// PCR values, or is malformed.
	CodeEventLogMismatch Code = "event_log_mismatch"
	// CodePCRNotQuoted: a PCR the policy needs was not in the quote.
	CodePCRNotQuoted Code = "pcr_not_quoted"
	// CodeUnavailable: transient server condition; retry after the hint.
	CodeUnavailable Code = "unavailable"
	// CodeInternal: a server fault; retry with backoff.
	CodeInternal Code = "internal"
	// CodeConflict: an admin request conflicts with the current state,
	// such as a serial number already registered to another TPM, or an
	// action on a device whose status does not allow it. Permanent: the
	// message says what is in the way.
	CodeConflict Code = "conflict"
)

// Permanent reports whether retrying the same request cannot succeed.
func (c Code) Permanent() bool {
	switch c {
	case CodeUnavailable, CodeInternal, CodeNonceUnknownOrUsed, CodePendingApproval, CodeBusy:
		// A lost session is cured by starting over with begin.
		return false
	}
	return true
}

// Error is the body of every non-2xx response.
type Error struct {
	Code          Code   `json:"code"`
	Message       string `json:"message"`
	CorrelationID string `json:"correlation_id,omitempty"`
	// RetryAfterSeconds mirrors the Retry-After header when set.
	RetryAfterSeconds int `json:"retry_after_seconds,omitempty"`
}

func (e *Error) Error() string {
	if e.CorrelationID != "" {
		return fmt.Sprintf("%s: %s (correlation id %s)", e.Code, e.Message, e.CorrelationID)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Is makes errors.Is(err, &api.Error{Code: c}) match on the code alone.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t != nil && t.Code == e.Code
}

// Errorf returns an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}
