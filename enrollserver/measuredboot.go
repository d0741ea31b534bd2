package enrollserver

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/firmware"
)

// Measured boot at finish. The quote proves PCR values; the device's TCG
// event log says what was measured into them. checkMeasuredBoot replays
// the log against the values attest.VerifyQuote verified and judges the
// result against the group's firmware policy (package firmware does both,
// purely).
//
// The group's measured-boot settings (mode, secure boot, required PCRs)
// are read at begin and kept in the session, because they decide which
// PCRs the device must quote; the approved references are read at finish,
// so retiring one takes effect at once.
//
// How firmware verdicts map to the wire (every refusal is permanent for
// the agent, which keeps a valid certificate until it expires):
//
//	firmware.ReasonMalformed           event_log_mismatch: an event log
//	                                   that does not even parse cannot
//	                                   match the quote; bad_request is kept
//	                                   for messages that break the protocol
//	firmware.ReasonEventLogMismatch    event_log_mismatch (also: no log
//	                                   while the group enforces)
//	firmware.ReasonPCRNotQuoted        pcr_not_quoted
//	firmware.ReasonFirmwareNotApproved firmware_not_approved
//	firmware.ReasonSecureBootDisabled  secure_boot_disabled

// FirmwarePCRs are the PCRs platform firmware measures into before the
// first boot option runs (PFP, "PCR Usage"). Every session quotes them:
// Replay needs them all.
var FirmwarePCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}

// quotePCRs is the selection a session asks for: the configured PCRs and
// the group's required ones, ascending.
func (s *Server) quotePCRs(required []int) []int {
	out := slices.Clone(s.cfg.PCRs)
	for _, p := range required {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// firmwareCode maps a firmware verdict to its wire code.
func firmwareCode(r firmware.Reason) api.Code {
	switch r {
	case firmware.ReasonPCRNotQuoted:
		return api.CodePCRNotQuoted
	case firmware.ReasonFirmwareNotApproved:
		return api.CodeFirmwareNotApproved
	case firmware.ReasonSecureBootDisabled:
		return api.CodeSecureBootDisabled
	default: // ReasonMalformed, ReasonEventLogMismatch
		return api.CodeEventLogMismatch
	}
}

// checkMeasuredBoot judges the event log of a finish whose quote verified
// to the PCR values verified. It returns the measurement to record on the
// device (nil: nothing to record) and, when the group enforces measured
// boot and the boot fails, the refusal. An error is a fault of ours (the
// store, an invalid stored policy), never a verdict on the device.
//
// The steps:
//
//  1. No log: refused under enforcement, nothing recorded otherwise.
//  2. Parse and replay (firmware.ParseMeasurements, Log.Replay) against
//     the verified PCRs and the group's required PCRs, or take the
//     result of the same replay from the replay cache.
//  3. Policy: the group's active reference for the measured digest,
//     secure boot if required (firmware.Policy.Match).
//  4. The verdict: enforced (approved or refused) or not_enforced, with
//     the code enforcement gives.
func (s *Server) checkMeasuredBoot(ctx context.Context, sess *store.Session, eventLog []byte, verified map[int][]byte, now time.Time) (*store.FirmwareMeasurement, *api.Error, error) {
	enforce := sess.MeasuredBoot == api.MeasuredBootEnforce
	meas := &store.FirmwareMeasurement{MeasuredAt: now, Renewal: sess.Renewal, SessionID: sess.ID, CorrelationID: sess.CorrelationID}

	// Step 1: a log to judge.
	if len(eventLog) == 0 {
		if !enforce {
			return nil, nil, nil
		}
		meas.Verdict, meas.Code = api.FirmwareRefused, string(api.CodeEventLogMismatch)
		meas.Reason = fmt.Sprintf("group %s enforces measured boot and the device sent no TCG event log: send the firmware's log with the quote "+
			"(enroll-agent --event-log, by default /sys/kernel/security/tpm0/binary_bios_measurements)", sess.Group)
		s.metrics.attestationFailures.WithLabelValues("no_event_log").Inc()
		s.metrics.measuredBoot.WithLabelValues(meas.Verdict, meas.Code).Inc()
		return meas, &api.Error{Code: api.CodeEventLogMismatch, Message: meas.Reason}, nil
	}

	// Steps 2 and 3.
	verdict := func() error {
		m, hit, err := replay(s.replays, eventLog, verified, sess.RequiredPCRs)
		if hit {
			s.metrics.replays.WithLabelValues("hit").Inc()
		} else {
			s.metrics.replays.WithLabelValues("miss").Inc()
		}
		if err != nil {
			return err
		}
		meas.Digest, meas.Version = m.FirmwareDigest(), m.FirmwareVersion()
		meas.SecureBoot, meas.SecureBootDetail = m.SecureBootEnabled(), m.SecureBootDetail()
		if bl := m.BootLoaderDigest(); bl != nil {
			meas.BootLoaderDigest = hex.EncodeToString(bl)
		}
		policy, err := s.firmwarePolicy(ctx, sess, meas.Digest)
		if err != nil {
			return err
		}
		ref, err := policy.Match(m)
		if err != nil {
			return err
		}
		meas.Reference = ref.Name
		return nil
	}()

	// Step 4.
	reason := firmware.ReasonOf(verdict)
	if verdict != nil && reason == 0 {
		if !enforce {
			s.log.LogAttrs(ctx, slog.LevelError, "measured boot not evaluated", slog.String("correlation_id", sess.CorrelationID),
				slog.String("device_id", sess.DeviceID), slog.String("err", verdict.Error()))
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("measured boot of device %s: %w", sess.DeviceID, verdict)
	}
	var refusal *api.Error
	switch {
	case verdict == nil && enforce:
		meas.Verdict = api.FirmwareApproved
	case verdict == nil:
		meas.Verdict = api.FirmwareNotEnforced
	default:
		code := firmwareCode(reason)
		meas.Code, meas.Reason = string(code), s.firmwareMessage(sess, meas, reason, verdict)
		meas.Verdict = api.FirmwareNotEnforced
		if enforce {
			meas.Verdict = api.FirmwareRefused
			refusal = &api.Error{Code: code, Message: meas.Reason}
			s.metrics.attestationFailures.WithLabelValues(reason.String()).Inc()
		}
	}
	s.metrics.measuredBoot.WithLabelValues(meas.Verdict, meas.Code).Inc()
	return meas, refusal, nil
}

// firmwareMessage says what failed and what to do about it.
func (s *Server) firmwareMessage(sess *store.Session, meas *store.FirmwareMeasurement, r firmware.Reason, err error) string {
	switch r {
	case firmware.ReasonFirmwareNotApproved:
		v := meas.Version
		if v == "" {
			v = "unknown"
		}
		return fmt.Sprintf("device %s booted firmware %s (version %q), which is not an approved reference of group %s: "+
			"if that firmware is trusted, approve it with `enrollctl firmware add --group %s --from-device %s`",
			sess.DeviceID, meas.Digest, v, sess.Group, sess.Group, sess.DeviceID)
	case firmware.ReasonSecureBootDisabled:
		return fmt.Sprintf("group %s requires secure boot and device %s booted without it (%s): turn UEFI secure boot on",
			sess.Group, sess.DeviceID, meas.SecureBootDetail)
	case firmware.ReasonPCRNotQuoted:
		return fmt.Sprintf("%v; this session quoted PCRs %v: quote every PCR the log measures (enrolld --pcrs, or the group's required PCRs)", err, sess.PCRs)
	}
	return fmt.Sprintf("%v; send the platform's TCG event log as the firmware wrote it, read after boot", err)
}

// firmwarePolicy is the group's firmware policy now, as it bears on the
// measured digest: the session's measured-boot settings, approving digest
// if the group has an active reference for it. The reference is looked up
// by its key (the policy a group of a thousand references would make
// decides the same, at a thousand times the cost).
func (s *Server) firmwarePolicy(ctx context.Context, sess *store.Session, digest string) (firmware.Policy, error) {
	p := firmware.Policy{RequireSecureBoot: sess.RequireSecureBoot, RequiredPCRs: sess.RequiredPCRs}
	r, err := s.cfg.Store.FirmwareReference(ctx, sess.Group, digest)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return p, fmt.Errorf("reading firmware reference of group %s: %w", sess.Group, err)
	case r.Active():
		p.Approved = []firmware.Reference{{Name: r.Name, FirmwareDigest: r.Digest}}
	}
	return p, nil
}

// recordFirmwareRefusal writes the measurement of a refused finish on the
// device record, with an audit record in the same transaction (within the
// device refusal rate limit: a device can refuse itself as often as it likes). A
// device without a record (refused at its first enrollment) gets one with
// status refused, so an operator can see what it booted and learn it
// (`enrollctl firmware add --from-device`). A failure to record is logged:
// the refusal stands either way.
func (s *Server) recordFirmwareRefusal(ctx context.Context, sess *store.Session, meas *store.FirmwareMeasurement, refusal *api.Error) {
	var rec *store.AuditRecord
	if s.refusal.take() {
		rec = &store.AuditRecord{Time: meas.MeasuredAt, ActorKind: PrincipalDevice, ActorName: sess.DeviceID, Action: "device.firmware",
			Target: sess.DeviceID, Outcome: "refused", Code: string(refusal.Code), Message: refusal.Message,
			After: mustJSON(firmwareView(meas)), CorrelationID: sess.CorrelationID}
	} else {
		s.metrics.auditSuppressed.Inc()
	}
	err := s.cfg.Store.UpdateDevices(context.WithoutCancel(ctx), []string{sess.DeviceID}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		var next store.Device
		if prev == nil {
			next = store.Device{ID: id, Status: store.StatusRefused, Admission: sess.Admission, EKPublic: sess.EKPublic, EKIssuer: sess.EKIssuer,
				AKPublic: sess.AKPublic, Serial: sess.Serial, Group: sess.Group, Labels: sess.Labels, Info: sess.Device}
		} else {
			if len(prev.EKPublic) > 0 && !bytes.Equal(prev.EKPublic, sess.EKPublic) {
				return nil, nil // never touch a record of another TPM
			}
			next = *prev
		}
		next.Firmware = meas
		ch := &store.DeviceChange{Device: &next}
		if rec != nil {
			ch.Audit = []*store.AuditRecord{rec}
		}
		return ch, nil
	})
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "recording refused firmware", slog.String("correlation_id", sess.CorrelationID),
			slog.String("device_id", sess.DeviceID), slog.String("err", err.Error()))
	}
}

// firmwareView is a measurement as the admin API and audit log show it.
func firmwareView(m *store.FirmwareMeasurement) *api.MeasuredFirmware {
	if m == nil {
		return nil
	}
	return &api.MeasuredFirmware{Digest: m.Digest, Version: m.Version, SecureBoot: m.SecureBoot, SecureBootDetail: m.SecureBootDetail,
		BootLoaderDigest: m.BootLoaderDigest, Verdict: m.Verdict, Code: api.Code(m.Code), Reason: m.Reason, Reference: m.Reference,
		MeasuredAt: m.MeasuredAt, Renewal: m.Renewal}
}
