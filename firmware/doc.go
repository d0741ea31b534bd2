// Package firmware verifies measured boot for enrollment: it parses the TCG
// event log a device sends, replays it against the PCR values of a verified
// quote, extracts what the boot proves (firmware identity and version,
// secure-boot state and keys, boot loader and kernel digests) and judges
// that against a group's firmware policy. Bytes in, verdicts out: it does no
// I/O, no logging, keeps no global state and reads no clock.
//
// The trust boundary: the event log is untrusted input from the device. Its
// events become facts only by replay, that is, when they hash to PCR values
// a genuine TPM quoted. This package trusts the PCR values it is given:
// the caller must have verified the quote (attest.VerifyQuote, whose
// output Log.Replay takes as is) over a fresh nonce, by an AK bound to the
// device's EK through credential activation.
//
// The steps, each relying on the ones before:
//
//	ParseMeasurements  decode the log (crypto-agile or legacy SHA-1), enforce
//	                   the caps in limits.go. Nothing is verified.
//	Log.Replay         check that the quoted PCRs cover the log and the
//	                   policy, replay the SHA-256 bank to the quoted values,
//	                   require one clean EV_SEPARATOR on each of PCRs 0-7,
//	                   and return Measurements, the verified view.
//	Policy.Evaluate    the firmware digest is approved, secure boot is on
//	                   when the group requires it.
//
// Every refusal is a *ReplayError (ParseMeasurements, Replay) or a
// *PolicyError (Evaluate) whose Reason's String is the stable wire code:
// malformed, event_log_mismatch, pcr_not_quoted, firmware_not_approved,
// secure_boot_disabled. Any other error is a fault of the caller or the
// configuration (ErrInvalidArgument, ErrNotReplayed, ErrInvalidPolicy).
//
// Event types are not covered by digests, so the package never trusts an
// event's type or data on its own: data is used only where the spec makes
// the digest a digest of that data (and the package checks that it is);
// elsewhere only the replayed digest is reported. See
// Measurements.FirmwareDigest for what identifies firmware and why.
//
// It builds on github.com/google/go-attestation: ParseEventLog,
// EventLog.Verify (with its named workarounds for firmware quirks) and
// ParseSecurebootState. The sub-package eventlogtest generates realistic
// logs for tests.
package firmware
