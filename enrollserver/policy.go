package enrollserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/attest"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// admit decides whether a device may enroll now and records why in sess.
// The checks run in a fixed order:
//
//  1. trust in the EK: a certificate chaining to a manufacturer root, or a
//     factory pre-registration of the EK hash (a certificate for another
//     key is a forgery and refused outright);
//  2. the device's record: revoked and denied devices are refused until an
//     operator re-admits them;
//  3. strangers (neither 1 nor an operator's approval): refused in closed
//     mode, leaving no record; pending in open mode;
//  4. the group's admission policy: auto admits, deny refuses, manual
//     records the device as pending until an operator approves it.
func (s *Server) admit(ctx context.Context, sess *store.Session, req *api.BeginRequest, ekPub any, now time.Time, renewal *bool) error {
	// 1. Trust in the EK.
	var certErr error
	trustedEK := false
	if len(req.EKCertificate) > 0 {
		if s.cfg.ManufacturerRoots == nil {
			certErr = api.Errorf(api.CodeEKUntrusted, "the EK certificate cannot be checked: this server trusts no TPM manufacturer root (enrolld --manufacturer-roots); configure the vendor's root or pre-register the device")
		} else {
			var issuer string
			issuer, certErr = s.verifyEKCertificate(req.EKCertificate, req.EKPublic, ekPub, now)
			if certErr == nil {
				sess.EKIssuer = issuer
			}
		}
		// A certificate for another key is a forgery, not an unknown
		// vendor: no pre-registration excuses it.
		var ve *attest.VerificationError
		if errors.As(certErr, &ve) && ve.Reason == attest.ReasonEKMismatch {
			s.auditDeviceRefusal(ctx, sess, "device.begin", api.CodeEKUntrusted, certErr.Error())
			return s.refuse(certErr)
		}
		trustedEK = certErr == nil
	}
	reg, err := s.cfg.Store.Preregistration(ctx, sess.DeviceID)
	if errors.Is(err, store.ErrNotFound) {
		reg = nil
	} else if err != nil {
		return fmt.Errorf("reading pre-registration: %w", err)
	}
	switch {
	case trustedEK:
		sess.Admission = store.AdmissionEKCertificate
	case reg != nil:
		sess.Admission = store.AdmissionPreregistered
	}

	// 2. The device's record.
	rec, err := s.cfg.Store.Device(ctx, sess.DeviceID)
	if errors.Is(err, store.ErrNotFound) {
		rec = nil
	} else if err != nil {
		return fmt.Errorf("reading device: %w", err)
	}
	if rec != nil && len(rec.EKPublic) > 0 && !bytes.Equal(rec.EKPublic, sess.EKPublic) {
		// Unreachable while IDs are SHA-256 of the EK: kept as the
		// invariant that a record never changes TPM.
		return api.Errorf(api.CodeConflict, "device %s is recorded with another EK", sess.DeviceID)
	}
	// A begin while holding an unexpired certificate is a renewal, whatever
	// the verdict (a revoked device's renewal is refused below).
	*renewal = rec != nil && rec.CertSerial != "" && rec.CertNotAfter.After(now)
	sess.Renewal = *renewal
	if rec != nil && (rec.Status == store.StatusRevoked || rec.Status == store.StatusDenied) {
		err := api.Errorf(statusCode(rec.Status), "device %s was %s by %s at %s (%s); an operator must re-admit it with `enrollctl devices readmit %s`",
			sess.DeviceID, rec.Status, orUnknown(rec.StatusChangedBy), rec.StatusChangedAt.UTC().Format(time.RFC3339), orUnknown(rec.StatusReason), sess.DeviceID)
		s.auditDeviceRefusal(ctx, sess, "device.begin", err.Code, err.Message)
		return err
	}
	approved := rec != nil && (rec.Status == store.StatusApproved || rec.Status == store.StatusEnrolled)

	// Factory data and group.
	sess.Group = s.cfg.DefaultGroup
	if reg != nil {
		sess.Serial, sess.Labels = reg.Serial, reg.Labels
		if reg.Group != "" {
			sess.Group = reg.Group
		}
	} else if rec != nil {
		sess.Serial, sess.Labels = rec.Serial, rec.Labels
		if rec.Group != "" {
			sess.Group = rec.Group
		}
	}
	gs, err := s.groupSettings(ctx, sess.Group)
	if err != nil {
		return err
	}
	policy := gs.Admission
	sess.CertLifetime = gs.CertLifetime
	sess.MeasuredBoot, sess.RequireSecureBoot, sess.RequiredPCRs = gs.MeasuredBoot, gs.RequireSecureBoot, gs.RequiredPCRs

	// 3. Strangers.
	if sess.Admission == "" {
		if approved && rec.Admission == store.AdmissionOperator {
			sess.Admission = store.AdmissionOperator
		} else if !s.cfg.OpenMode {
			if certErr != nil {
				return s.refuse(certErr)
			}
			return api.Errorf(api.CodeNotRegistered, "device %s has no trusted EK certificate and was not pre-registered: register it with `enrollctl preregister --ek-hash %s` or `enrollctl import`", sess.DeviceID, sess.DeviceID)
		} else {
			if policy == api.AdmissionDeny {
				return api.Errorf(api.CodeDenied, "group %s admits no devices (admission deny)", sess.Group)
			}
			// Open mode: an operator decides about the stranger.
			sess.Admission = store.AdmissionOperator
			if !approved {
				return s.pend(ctx, sess, now)
			}
		}
	}

	// 4. The group's policy.
	switch policy {
	case api.AdmissionDeny:
		err := api.Errorf(api.CodeDenied, "group %s admits no devices (admission deny); move the device to another group or change the group's policy", sess.Group)
		s.auditDeviceRefusal(ctx, sess, "device.begin", err.Code, err.Message)
		return err
	case api.AdmissionManual:
		if !approved {
			return s.pend(ctx, sess, now)
		}
	}
	return nil
}

// pend records the device as pending (once; later begins refresh its
// expiry) and tells it to come back after PendingRetryAfter.
func (s *Server) pend(ctx context.Context, sess *store.Session, now time.Time) error {
	d := &store.Device{
		ID: sess.DeviceID, Status: store.StatusPending, Admission: sess.Admission,
		EKPublic: sess.EKPublic, EKIssuer: sess.EKIssuer, Serial: sess.Serial, Group: sess.Group, Labels: sess.Labels,
		Info: sess.Device, PendingSince: now, PendingExpiresAt: now.Add(s.cfg.PendingTTL),
	}
	rec := &store.AuditRecord{Time: now, ActorKind: "device", ActorName: sess.DeviceID, Action: "device.pending",
		Target: sess.DeviceID, Outcome: "success", After: mustJSON(deviceView(d)), CorrelationID: sess.CorrelationID}
	_, err := s.cfg.Store.PutPending(ctx, d, s.cfg.MaxPending, rec)
	retry := int(s.cfg.PendingRetryAfter / time.Second)
	switch {
	case errors.Is(err, store.ErrPendingFull):
		s.log.LogAttrs(ctx, slog.LevelWarn, "pending list full", slog.String("correlation_id", sess.CorrelationID), slog.String("device_id", sess.DeviceID), slog.Int("max_pending", s.cfg.MaxPending))
		return &api.Error{Code: api.CodeBusy, Message: fmt.Sprintf("the pending list is full (%d devices); retry later", s.cfg.MaxPending), RetryAfterSeconds: retry}
	case errors.Is(err, store.ErrExists):
		// An operator decided between our read and this write: retry.
		return &api.Error{Code: api.CodeUnavailable, Message: "device status changed during begin; retry", RetryAfterSeconds: 1}
	case err != nil:
		return fmt.Errorf("recording pending device: %w", err)
	}
	return &api.Error{Code: api.CodePendingApproval,
		Message:           fmt.Sprintf("device %s in group %s waits for an operator: `enrollctl devices approve %s`", sess.DeviceID, sess.Group, sess.DeviceID),
		RetryAfterSeconds: retry}
}

// groupSettings returns a group's record, or the server's defaults for a
// group without one: default admission, server certificate lifetime (0),
// measured boot off.
func (s *Server) groupSettings(ctx context.Context, name string) (*store.Group, error) {
	g, err := s.cfg.Store.Group(ctx, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return &store.Group{Name: name, Admission: s.cfg.DefaultAdmission}, nil
	case err != nil:
		return nil, fmt.Errorf("reading group %s: %w", name, err)
	}
	return g, nil
}

// finishAllowed re-checks, inside the enrollment transaction, that no
// operator revoked or denied the device since begin.
func finishAllowed(prev *store.Device, sess *store.Session) error {
	if prev == nil {
		return nil
	}
	if len(prev.EKPublic) > 0 && !bytes.Equal(prev.EKPublic, sess.EKPublic) {
		return api.Errorf(api.CodeConflict, "device %s is recorded with another EK", prev.ID)
	}
	switch prev.Status {
	case store.StatusRevoked, store.StatusDenied:
		return api.Errorf(statusCode(prev.Status), "device %s was %s during enrollment: %s", prev.ID, prev.Status, orUnknown(prev.StatusReason))
	case store.StatusPending:
		return api.Errorf(api.CodePendingApproval, "device %s waits for an operator", prev.ID)
	}
	return nil
}

// issueAudit is the audit record of an issued device certificate.
func issueAudit(now time.Time, sess *store.Session, prev, next *store.Device) *store.AuditRecord {
	var before json.RawMessage
	if prev != nil {
		before = mustJSON(deviceView(prev))
	}
	action := "certificate.issue"
	if sess.Renewal {
		action = "certificate.renew"
	}
	after := issueView{Status: next.Status, CertSerial: next.CertSerial, CertNotAfter: next.CertNotAfter,
		BundleVersion: next.BundleVersion, Group: next.Group, Admission: next.Admission}
	if fw := next.Firmware; fw != nil && fw.SessionID == sess.ID {
		after.FirmwareDigest, after.FirmwareVerdict = &fw.Digest, &fw.Verdict
		after.FirmwareCode = fw.Code
	}
	return &store.AuditRecord{Time: now, ActorKind: "device", ActorName: sess.DeviceID, Action: action,
		Target: sess.DeviceID, Outcome: "success", Before: before, After: mustJSON(after), CorrelationID: sess.CorrelationID}
}

// issueView is what the audit record of an issued certificate shows of
// the device after. A struct rather than a map, for speed (one per
// enrollment); its fields are in the sorted order a map would encode.
type issueView struct {
	Admission       store.Admission    `json:"admission"`
	BundleVersion   uint64             `json:"bundle_version"`
	CertNotAfter    time.Time          `json:"cert_not_after"`
	CertSerial      string             `json:"cert_serial"`
	FirmwareCode    string             `json:"firmware_code,omitempty"`
	FirmwareDigest  *string            `json:"firmware_digest,omitempty"`
	FirmwareVerdict *string            `json:"firmware_verdict,omitempty"`
	Group           string             `json:"group"`
	Status          store.DeviceStatus `json:"status"`
}

func statusCode(st store.DeviceStatus) api.Code {
	if st == store.StatusRevoked {
		return api.CodeRevoked
	}
	return api.CodeDenied
}

func orUnknown(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// deviceView is the part of a device record an audit record shows.
func deviceView(d *store.Device) *deviceAuditView {
	return &deviceAuditView{Status: d.Status, Group: d.Group, Admission: d.Admission, Serial: d.Serial,
		Labels: d.Labels, CertSerial: d.CertSerial, Reason: d.StatusReason}
}

// deviceAuditView is deviceView's JSON: a struct rather than a map, for
// speed (one or two per enrollment); its fields are in the sorted order a
// map would encode, the optional ones left out when empty.
type deviceAuditView struct {
	Admission  store.Admission    `json:"admission"`
	CertSerial string             `json:"cert_serial,omitempty"`
	Group      string             `json:"group"`
	Labels     map[string]string  `json:"labels,omitempty"`
	Reason     string             `json:"reason,omitempty"`
	Serial     string             `json:"serial,omitempty"`
	Status     store.DeviceStatus `json:"status"`
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return json.RawMessage(fmt.Sprintf(`{"error":%q}`, err.Error()))
	}
	return b
}
