package firmware

import (
	"errors"
	"fmt"
)

// Reason is why a measured boot was refused. Its String is the stable,
// snake_case code the enrollment server puts on the wire and in metric
// labels.
type Reason int

// Refusal reasons, grouped by the step that reports them.
const (
	// ParseMeasurements and Replay.

	// ReasonMalformed: the event log is empty, over a cap in limits.go,
	// or does not decode as a TCG event log.
	ReasonMalformed Reason = iota + 1

	// Replay.

	// ReasonEventLogMismatch: the log does not replay to the quoted PCR
	// values (an altered event, events measured after the quote, events
	// missing), it has no SHA-256 digests to replay (a legacy SHA-1
	// log), a firmware PCR lacks its single EV_SEPARATOR, or a required
	// PCR the log does not measure is not at its reset value.
	ReasonEventLogMismatch
	// ReasonPCRNotQuoted: a PCR the log measures, a firmware PCR (0-7) or
	// a PCR the policy requires was not quoted.
	ReasonPCRNotQuoted

	// Policy.Evaluate.

	// ReasonFirmwareNotApproved: the firmware digest is not one of the
	// policy's approved references (or the policy approves none).
	ReasonFirmwareNotApproved
	// ReasonSecureBootDisabled: the policy requires secure boot and the
	// log does not show it enabled (off, or its state cannot be
	// established from the log).
	ReasonSecureBootDisabled
)

var reasonCodes = map[Reason]string{
	ReasonMalformed:           "malformed",
	ReasonEventLogMismatch:    "event_log_mismatch",
	ReasonPCRNotQuoted:        "pcr_not_quoted",
	ReasonFirmwareNotApproved: "firmware_not_approved",
	ReasonSecureBootDisabled:  "secure_boot_disabled",
}

// String returns the reason's wire code, or "Reason(n)" for unknown values.
func (r Reason) String() string {
	if s, ok := reasonCodes[r]; ok {
		return s
	}
	return fmt.Sprintf("Reason(%d)", int(r))
}

// ReplayError is the verdict of ParseMeasurements or Replay on an event log
// that cannot be trusted. Match it with errors.As, or with
// errors.Is(err, &ReplayError{Reason: r}) to test the reason alone.
type ReplayError struct {
	Reason Reason
	// PCRs are the PCR indices concerned (ascending), when known.
	PCRs []int
	// Detail says which check failed, in words for an operator.
	Detail string
	// Err is the underlying error (for example go-attestation's
	// attest.ReplayError), if any.
	Err error
}

// Error returns "firmware: <reason>: <detail>: <err>", leaving out empty
// parts.
func (e *ReplayError) Error() string { return format(e.Reason, e.Detail, e.Err) }

// Unwrap returns the underlying error.
func (e *ReplayError) Unwrap() error { return e.Err }

// Is reports whether target is a *ReplayError with the same Reason.
func (e *ReplayError) Is(target error) bool {
	t, ok := target.(*ReplayError)
	return ok && t != nil && t.Reason == e.Reason
}

// PolicyError is the verdict of Policy.Evaluate on measurements the policy
// does not accept. Match it with errors.As or errors.Is(err,
// &PolicyError{Reason: r}).
type PolicyError struct {
	Reason Reason
	// Detail says which rule failed, in words for an operator.
	Detail string
}

// Error returns "firmware: <reason>: <detail>".
func (e *PolicyError) Error() string { return format(e.Reason, e.Detail, nil) }

// Is reports whether target is a *PolicyError with the same Reason.
func (e *PolicyError) Is(target error) bool {
	t, ok := target.(*PolicyError)
	return ok && t != nil && t.Reason == e.Reason
}

// ReasonOf returns the Reason of the first *ReplayError or *PolicyError in
// err's chain, or 0 if there is none (then err, if any, is a fault of the
// caller or the configuration, not a verdict on the device).
func ReasonOf(err error) Reason {
	var re *ReplayError
	if errors.As(err, &re) {
		return re.Reason
	}
	var pe *PolicyError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	return 0
}

// Errors that are not verdicts: the caller or the configuration is at
// fault.
var (
	// ErrNotReplayed: Measurements given to Policy.Evaluate (or
	// NewReference) were not produced by Log.Replay.
	ErrNotReplayed = errors.New("firmware: measurements were not produced by Log.Replay")
	// ErrInvalidPolicy: Policy.Validate found a problem; Evaluate refuses
	// to run an invalid policy.
	ErrInvalidPolicy = errors.New("firmware: invalid policy")
	// ErrInvalidArgument: Replay got PCR values or indices that are not
	// SHA-256 PCRs 0..23 (attest.VerifyQuote never returns such values).
	ErrInvalidArgument = errors.New("firmware: invalid argument")
)

func format(r Reason, detail string, err error) string {
	s := "firmware: " + r.String()
	if detail != "" {
		s += ": " + detail
	}
	if err != nil {
		s += ": " + err.Error()
	}
	return s
}

func replayErr(r Reason, pcrs []int, err error, f string, args ...any) error {
	return &ReplayError{Reason: r, PCRs: pcrs, Detail: fmt.Sprintf(f, args...), Err: err}
}

func policyErr(r Reason, f string, args ...any) error {
	return &PolicyError{Reason: r, Detail: fmt.Sprintf(f, args...)}
}
