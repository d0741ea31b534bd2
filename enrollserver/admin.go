package enrollserver

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Admin operations. Every method that changes state is authorised by the
// transport adapter (Authorize) and records exactly one audit record per
// change or refusal, written in the transaction of the change.

// adminRefused audits and counts a refused admin write and returns err.
func (s *Server) adminRefused(ctx context.Context, call *Call, action, target string, err *api.Error) error {
	s.metrics.admin.WithLabelValues(action, "refused").Inc()
	s.auditRefusal(ctx, call, action, target, err)
	return err
}

// adminFailed handles an error of a state change: an *api.Error (from a
// check inside the transaction) is a refusal; anything else is ours.
func (s *Server) adminFailed(ctx context.Context, call *Call, action, target string, err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return s.adminRefused(ctx, call, action, target, ae)
	}
	s.metrics.admin.WithLabelValues(action, "error").Inc()
	s.auditRefusal(ctx, call, action, target, err)
	return err
}

func pageSize(n int) int {
	if n <= 0 {
		return api.DefaultPageSize
	}
	return min(n, api.MaxPageSize)
}

func uintToken(n uint64) string { return strconv.FormatUint(n, 10) }

// ParseUintToken reads a page token made by uintToken.
func ParseUintToken(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, api.Errorf(api.CodeBadRequest, "page token %.40q is not one this server issued", s)
	}
	return n, nil
}

// Preregister records a factory batch in one transaction, all or nothing.
// Re-registering the same rows is a no-op; a serial registered to another
// TPM refuses the batch.
func (s *Server) Preregister(ctx context.Context, call *Call, req *api.PreregisterRequest) (*api.PreregisterResponse, error) {
	const action = "preregister"
	rows := make([]*store.StagedRow, 0, len(req.Devices))
	var bad []store.RowError
	for i, d := range req.Devices {
		if d.Group != "" {
			if err := api.ValidateGroupName(d.Group); err != nil {
				bad = append(bad, rowErr(i+1, err))
				continue
			}
		}
		rows = append(rows, &store.StagedRow{Line: i + 1, DeviceID: d.DeviceID, Serial: d.Serial, Group: d.Group})
	}
	target := fmt.Sprintf("%d devices", len(req.Devices))
	if len(req.Devices) == 1 {
		target = req.Devices[0].DeviceID
	}
	if len(bad) > 0 {
		return nil, s.adminRefused(ctx, call, action, target, api.Errorf(api.CodeBadRequest, "devices[%d]: %s", bad[0].Line-1, bad[0].Reason))
	}
	now := s.cfg.Now()
	var res *mergeResult
	err := s.cfg.Store.MergePreregistrations(ctx, func(r store.PreregReader) (*store.PreregPlan, error) {
		var err error
		if res, err = mergeRows(rows, r, now); err != nil {
			return nil, err
		}
		if len(res.rejected) > 0 {
			e := res.rejected[0]
			return nil, api.Errorf(api.Code(e.Code), "devices[%d]: %s; nothing was registered", e.Line-1, e.Reason)
		}
		rec := s.record(call, action, target)
		rec.After = mustJSON(map[string]any{"created": res.created, "updated": res.updated, "unchanged": res.unchanged})
		return &store.PreregPlan{Put: res.put, Audit: append(s.conflictAudits(call, res), rec)}, nil
	})
	if err != nil {
		return nil, s.adminFailed(ctx, call, action, target, err)
	}
	s.metrics.admin.WithLabelValues(action, "success").Inc()
	s.log.LogAttrs(ctx, slog.LevelInfo, "devices pre-registered", slog.String("operator", call.Principal.String()), slog.Int("count", len(rows)))
	return &api.PreregisterResponse{Registered: len(rows)}, nil
}

func rowErr(line int, err error) store.RowError {
	var ae *api.Error
	if errors.As(err, &ae) {
		return store.RowError{Line: line, Code: string(ae.Code), Reason: ae.Message}
	}
	return store.RowError{Line: line, Code: string(api.CodeBadRequest), Reason: err.Error()}
}

// mergeResult is what mergeRows decided.
type mergeResult struct {
	put                         []*store.Preregistration
	created, updated, unchanged int
	rejected                    []store.RowError
	conflicts                   []serialConflict
	undefinedGroups             []string
}

type serialConflict struct {
	line            int
	serial, claimer string
	owner           string
}

// mergeRows decides each row against the stored pre-registrations: new,
// changed or the same, or refused: a device listed twice, or a serial that
// belongs to another TPM (in the store or earlier in the batch). A device's
// serial is pinned to its EK: another TPM never takes it over.
func mergeRows(rows []*store.StagedRow, r store.PreregReader, now time.Time) (*mergeResult, error) {
	if err := r.Prefetch(rows); err != nil {
		return nil, err
	}
	res := &mergeResult{}
	byDevice := make(map[string]int, len(rows))
	bySerial := make(map[string]int, len(rows))
	undefined := map[string]bool{}
	checkedGroups := map[string]bool{}
	for _, row := range rows {
		if l, dup := byDevice[row.DeviceID]; dup {
			res.rejected = append(res.rejected, store.RowError{Line: row.Line, Code: string(api.CodeBadRequest),
				Reason: fmt.Sprintf("device %s is already on line %d", row.DeviceID, l)})
			continue
		}
		if row.Serial != "" {
			if l, dup := bySerial[row.Serial]; dup {
				res.rejected = append(res.rejected, store.RowError{Line: row.Line, Code: string(api.CodeConflict),
					Reason: fmt.Sprintf("serial %s is already on line %d for another device", row.Serial, l)})
				continue
			}
			owner, err := r.SerialOwner(row.Serial)
			if err != nil {
				return nil, err
			}
			if owner != "" && owner != row.DeviceID {
				res.rejected = append(res.rejected, store.RowError{Line: row.Line, Code: string(api.CodeConflict),
					Reason: fmt.Sprintf("serial %s is registered to another TPM (device %s); a serial is pinned to its EK", row.Serial, owner)})
				res.conflicts = append(res.conflicts, serialConflict{line: row.Line, serial: row.Serial, claimer: row.DeviceID, owner: owner})
				continue
			}
		}
		byDevice[row.DeviceID] = row.Line
		if row.Serial != "" {
			bySerial[row.Serial] = row.Line
		}
		if row.Group != "" && !checkedGroups[row.Group] {
			checkedGroups[row.Group] = true
			g, err := r.Group(row.Group)
			if err != nil {
				return nil, err
			}
			if g == nil {
				undefined[row.Group] = true
			}
		}
		next := &store.Preregistration{DeviceID: row.DeviceID, Serial: row.Serial, Group: row.Group, Labels: row.Labels, CreatedAt: now}
		prev, err := r.Preregistration(row.DeviceID)
		if err != nil {
			return nil, err
		}
		switch {
		case prev == nil:
			res.created++
		case store.SamePreregistration(prev, next):
			res.unchanged++
			continue
		default:
			next.CreatedAt = prev.CreatedAt
			res.updated++
		}
		res.put = append(res.put, next)
	}
	res.undefinedGroups = slices.Sorted(maps.Keys(undefined))
	return res, nil
}

// maxConflictAudits bounds the serial-conflict records one batch writes
// (the import's own record carries the count).
const maxConflictAudits = 100

// conflictAudits records each refused takeover of a serial.
func (s *Server) conflictAudits(call *Call, res *mergeResult) []*store.AuditRecord {
	var out []*store.AuditRecord
	for _, c := range res.conflicts[:min(len(res.conflicts), maxConflictAudits)] {
		rec := s.record(call, "device.serial_conflict", c.serial)
		rec.Outcome, rec.Code = "refused", string(api.CodeConflict)
		rec.Message = fmt.Sprintf("line %d: device %s claimed serial %s, which is pinned to device %s", c.line, c.claimer, c.serial, c.owner)
		out = append(out, rec)
	}
	return out
}

// DeviceQuery filters a device listing.
type DeviceQuery struct {
	Status string
	Group  string
	Labels map[string]string
	After  string
	Limit  int
}

func (q *DeviceQuery) matches(d *store.Device) bool {
	if q.Group != "" && d.Group != q.Group {
		return false
	}
	for k, v := range q.Labels {
		if got, ok := d.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// ListDevices returns one page of devices in ID order (PermRead).
func (s *Server) ListDevices(ctx context.Context, q DeviceQuery) (*api.DeviceList, error) {
	if q.Status != "" && !api.ValidStatus(q.Status) {
		return nil, api.Errorf(api.CodeBadRequest, "status %.40q must be one of %v", q.Status, api.DeviceStatuses())
	}
	limit := pageSize(q.Limit)
	out := &api.DeviceList{Devices: []api.DeviceSummary{}}
	scanned := 0
	last := ""
	fn := func(d *store.Device) bool {
		scanned++
		last = d.ID
		if q.matches(d) {
			out.Devices = append(out.Devices, deviceSummary(d))
		}
		return len(out.Devices) < limit && scanned < MaxDeviceScan
	}
	var err error
	if q.Status != "" {
		err = s.cfg.Store.DevicesByStatus(ctx, store.DeviceStatus(q.Status), q.After, fn)
	} else {
		err = s.cfg.Store.DevicesAfter(ctx, q.After, fn)
	}
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	if len(out.Devices) == limit || scanned >= MaxDeviceScan {
		out.NextPageToken = last
	}
	return out, nil
}

func deviceSummary(d *store.Device) api.DeviceSummary {
	return api.DeviceSummary{
		DeviceID: d.ID, Status: string(d.Status), Admission: string(d.Admission),
		Serial: d.Serial, Group: d.Group, Labels: d.Labels, Hostname: d.Info.Hostname,
		CertSerial: d.CertSerial, CertNotAfter: d.CertNotAfter, BundleVersion: d.BundleVersion,
		Enrollments: d.Enrollments, Renewals: d.Renewals, LastEnrolledAt: d.LastEnrolledAt,
		PendingSince: d.PendingSince, PendingExpiresAt: d.PendingExpiresAt,
		StatusChangedAt: d.StatusChangedAt, StatusChangedBy: d.StatusChangedBy, StatusReason: d.StatusReason,
		Firmware: firmwareView(d.Firmware),
	}
}

// maxDetailCertificates bounds the certificates GetDevice lists.
const maxDetailCertificates = 100

// GetDevice returns one device with its certificates (newest serials are
// random, so they come in serial order) and config (PermRead).
func (s *Server) GetDevice(ctx context.Context, id string) (*api.DeviceDetail, error) {
	if !api.ValidDeviceID(id) {
		return nil, api.Errorf(api.CodeBadRequest, "device ID %.80q must be 64 lowercase hex characters", id)
	}
	d, err := s.cfg.Store.Device(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, api.Errorf(api.CodeNotFound, "no device %s: see `enrollctl devices list`", id)
	} else if err != nil {
		return nil, err
	}
	out := &api.DeviceDetail{DeviceSummary: deviceSummary(d), EKIssuer: d.EKIssuer, AgentVersion: d.Info.AgentVersion, Certificates: []api.CertificateInfo{}}
	if err := s.cfg.Store.Certificates(ctx, id, "", func(c *store.IssuedCertificate) bool {
		out.Certificates = append(out.Certificates, certInfo(c))
		return len(out.Certificates) < maxDetailCertificates
	}); err != nil {
		return nil, err
	}
	cv, scope, err := s.effectiveConfig(ctx, d)
	if err != nil {
		return nil, err
	}
	out.ConfigScope = scope
	if cv != nil {
		out.ConfigVersion = cv.Version
	} else if out.ConfigVersion, err = s.defaultVersion(ctx); err != nil {
		return nil, err
	}
	return out, nil
}

func certInfo(c *store.IssuedCertificate) api.CertificateInfo {
	return api.CertificateInfo{Serial: c.Serial, DeviceID: c.DeviceID, NotBefore: c.NotBefore, NotAfter: c.NotAfter,
		Renewal: c.Renewal, RevokedAt: c.RevokedAt, RevocationReason: c.RevocationReason}
}

// CertQuery filters a certificate listing.
type CertQuery struct {
	DeviceID string
	Revoked  bool
	After    string
	Limit    int
}

// ListCertificates returns one page of issued certificates in serial order
// (PermRead).
func (s *Server) ListCertificates(ctx context.Context, q CertQuery) (*api.CertificateList, error) {
	if q.DeviceID != "" && !api.ValidDeviceID(q.DeviceID) {
		return nil, api.Errorf(api.CodeBadRequest, "device %.80q must be 64 lowercase hex characters", q.DeviceID)
	}
	limit := pageSize(q.Limit)
	out := &api.CertificateList{Certificates: []api.CertificateInfo{}}
	scanned, last := 0, ""
	err := s.cfg.Store.Certificates(ctx, q.DeviceID, q.After, func(c *store.IssuedCertificate) bool {
		scanned++
		last = c.Serial
		if !q.Revoked || !c.RevokedAt.IsZero() {
			out.Certificates = append(out.Certificates, certInfo(c))
		}
		return len(out.Certificates) < limit && scanned < MaxDeviceScan
	})
	if err != nil {
		return nil, err
	}
	if len(out.Certificates) == limit || scanned >= MaxDeviceScan {
		out.NextPageToken = last
	}
	return out, nil
}

// Status reports counts and configuration (PermRead).
func (s *Server) Status(ctx context.Context, call *Call) (*api.StatusResponse, error) {
	st, err := s.cfg.Store.Stats(ctx)
	if err != nil {
		return nil, err
	}
	out := &api.StatusResponse{Version: Version, TrustDomain: s.TrustDomain(), Ready: true, ClosedMode: !s.cfg.OpenMode,
		Devices: map[string]int{}, Preregistered: st.Preregistrations, Certificates: st.Certificates, Revoked: st.Revocations,
		AuditRecords: st.AuditRecords, CRLNumber: st.CRLNumber, MaxPending: s.cfg.MaxPending, Operator: call.Principal.String()}
	for k, v := range st.Devices {
		out.Devices[string(k)] = v
	}
	if c := s.crl.current(); c != nil {
		out.CRLNextUpdate = c.nextUpdate
	}
	return out, nil
}

// Version is the server's version, reported by Status.
const Version = "0.2.0"

// DeviceAction approves, denies, revokes or re-admits devices (PermOperate).
// Each device gets one audit record: the change, "already so", or the
// refusal. A revocation signs a new CRL before returning.
func (s *Server) DeviceAction(ctx context.Context, call *Call, action api.DeviceAction, req *api.DeviceActionRequest) (*api.DeviceActionResponse, error) {
	auditAction := "device." + string(action)
	if !slices.Contains(api.DeviceActions(), action) {
		return nil, s.adminRefused(ctx, call, auditAction, "", api.Errorf(api.CodeNotFound, "no device action %.40q: use approve, deny, revoke or readmit", action))
	}
	if action == api.ActionRevoke && req.Reason == "" {
		return nil, s.adminRefused(ctx, call, auditAction, selectorString(req), api.Errorf(api.CodeBadRequest, "revoke needs a reason (--reason): it goes into the audit log"))
	}
	if action != api.ActionRevoke && req.ReasonCode != "" {
		return nil, s.adminRefused(ctx, call, auditAction, selectorString(req), api.Errorf(api.CodeBadRequest, "reason_code applies to revoke only"))
	}
	ids := req.DeviceIDs
	if len(ids) == 0 {
		var err error
		if ids, err = s.selectDevices(ctx, action, req); err != nil {
			return nil, s.adminFailed(ctx, call, auditAction, selectorString(req), err)
		}
	}
	now := s.cfg.Now()
	results := make(map[string]*api.DeviceActionResult, len(ids))
	changes := make(map[string]*store.DeviceChange, len(ids))
	err := s.cfg.Store.UpdateDevices(ctx, ids, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		res, ch := s.decide(call, action, req, id, prev, now)
		results[id] = res
		changes[id] = ch
		return ch, nil
	})
	if err != nil {
		return nil, s.adminFailed(ctx, call, auditAction, selectorString(req), err)
	}
	out := &api.DeviceActionResponse{Action: action, Results: make([]api.DeviceActionResult, 0, len(ids))}
	revoked := false
	for _, id := range ids {
		r := results[id]
		if ch := changes[id]; ch != nil && len(ch.Revoked) > 0 {
			r.RevokedCertificates = ch.Revoked
			revoked = true
		}
		outcome := "success"
		if r.Outcome == api.OutcomeRefused {
			outcome = "refused"
		}
		s.metrics.admin.WithLabelValues(auditAction, outcome).Inc()
		out.Results = append(out.Results, *r)
	}
	if revoked || action == api.ActionRevoke {
		if _, err := s.RefreshCRL(ctx); err != nil {
			// The revocation is recorded and enforced by enrolld; the
			// CRL is retried by the daemon's refresh loop. The operator
			// is told, as relying parties do not see it yet.
			s.log.LogAttrs(ctx, slog.LevelError, "signing CRL after revocation", slog.String("correlation_id", call.CorrelationID), slog.String("err", err.Error()))
			out.CRLError = fmt.Sprintf("the revocation is recorded and enforced by enrolld, but the CRL could not be signed again (%v); the server retries every %s",
				err, s.cfg.CRLLifetime/4)
		}
		// A CA of its own (step-ca) must revoke them too; see revokeforward.go.
		s.forwardRevocations(ctx, call.CorrelationID, changes)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "device action", slog.String("correlation_id", call.CorrelationID),
		slog.String("operator", call.Principal.String()), slog.String("action", string(action)), slog.Int("devices", len(ids)))
	return out, nil
}

// decide applies one action to one device record. It must be pure: the
// store may call it again if its transaction is retried.
func (s *Server) decide(call *Call, action api.DeviceAction, req *api.DeviceActionRequest, id string, prev *store.Device, now time.Time) (*api.DeviceActionResult, *store.DeviceChange) {
	auditAction := "device." + string(action)
	rec := s.record(call, auditAction, id)
	rec.Time = now
	refuse := func(code api.Code, format string, args ...any) (*api.DeviceActionResult, *store.DeviceChange) {
		msg := fmt.Sprintf(format, args...)
		rec.Outcome, rec.Code, rec.Message = "refused", string(code), msg
		status := ""
		if prev != nil {
			status = string(prev.Status)
		}
		return &api.DeviceActionResult{DeviceID: id, Outcome: api.OutcomeRefused, Code: code, Status: status, Message: msg},
			&store.DeviceChange{Audit: []*store.AuditRecord{rec}}
	}
	unchanged := func() (*api.DeviceActionResult, *store.DeviceChange) {
		rec.Message = "already " + string(prev.Status)
		return &api.DeviceActionResult{DeviceID: id, Outcome: api.OutcomeUnchanged, Status: string(prev.Status), Message: rec.Message},
			&store.DeviceChange{Audit: []*store.AuditRecord{rec}}
	}
	if prev == nil {
		return refuse(api.CodeNotFound, "no device %s: it has not asked to enroll (pending devices appear in `enrollctl devices list --status pending`)", id)
	}
	var to store.DeviceStatus
	switch action {
	case api.ActionApprove:
		switch prev.Status {
		case store.StatusPending, store.StatusRefused:
			to = store.StatusApproved
		case store.StatusApproved, store.StatusEnrolled:
			return unchanged()
		default:
			return refuse(api.CodeConflict, "device %s is %s: re-admit it with `enrollctl devices readmit %s`", id, prev.Status, id)
		}
	case api.ActionDeny:
		switch prev.Status {
		case store.StatusPending, store.StatusApproved, store.StatusRefused:
			to = store.StatusDenied
		case store.StatusDenied:
			return unchanged()
		case store.StatusEnrolled:
			return refuse(api.CodeConflict, "device %s holds a certificate: revoke it with `enrollctl devices revoke %s --reason ...`", id, id)
		default:
			return refuse(api.CodeConflict, "device %s is %s", id, prev.Status)
		}
	case api.ActionRevoke:
		if prev.Status == store.StatusRevoked {
			return unchanged()
		}
		to = store.StatusRevoked
	case api.ActionReadmit:
		switch prev.Status {
		case store.StatusDenied, store.StatusRevoked:
			to = store.StatusApproved
		default:
			return refuse(api.CodeConflict, "device %s is %s, not denied or revoked: nothing to re-admit", id, prev.Status)
		}
	}
	next := *prev
	next.Status, next.StatusChangedAt, next.StatusChangedBy, next.StatusReason = to, now, call.Principal.String(), req.Reason
	next.PendingSince, next.PendingExpiresAt = time.Time{}, time.Time{}
	rec.Before, rec.After = mustJSON(deviceView(prev)), mustJSON(deviceView(&next))
	ch := &store.DeviceChange{Device: &next, Audit: []*store.AuditRecord{rec}}
	if to == store.StatusRevoked {
		ch.Revoke = &store.Revocation{RevokedAt: now, Reason: req.Reason, ReasonCode: api.RevocationReasonCodes[req.ReasonCode]}
	}
	return &api.DeviceActionResult{DeviceID: id, Outcome: api.OutcomeChanged, Status: string(to)}, ch
}

// selectDevices lists the devices a selector picks: pending ones for
// approve and deny, any for revoke and readmit.
func (s *Server) selectDevices(ctx context.Context, action api.DeviceAction, req *api.DeviceActionRequest) ([]string, error) {
	q := DeviceQuery{Group: req.Group, Labels: req.Labels}
	var ids []string
	var tooMany bool
	fn := func(d *store.Device) bool {
		if q.matches(d) {
			if len(ids) == api.MaxDevicesPerAction {
				tooMany = true
				return false
			}
			ids = append(ids, d.ID)
		}
		return true
	}
	var err error
	switch action {
	case api.ActionApprove, api.ActionDeny:
		err = s.cfg.Store.DevicesByStatus(ctx, store.StatusPending, "", fn)
	default:
		err = s.cfg.Store.Devices(ctx, fn)
	}
	if err != nil {
		return nil, err
	}
	if tooMany {
		return nil, api.Errorf(api.CodeBadRequest, "the selector matches more than %d devices: narrow it with labels", api.MaxDevicesPerAction)
	}
	if len(ids) == 0 {
		return nil, api.Errorf(api.CodeNotFound, "no device matches %s", selectorString(req))
	}
	return ids, nil
}

func selectorString(req *api.DeviceActionRequest) string {
	switch {
	case len(req.DeviceIDs) == 1:
		return req.DeviceIDs[0]
	case len(req.DeviceIDs) > 1:
		return fmt.Sprintf("%d devices", len(req.DeviceIDs))
	}
	s := ""
	if req.Group != "" {
		s = "group=" + req.Group
	}
	if len(req.Labels) > 0 {
		if s != "" {
			s += ","
		}
		s += "labels=" + api.FormatLabels(req.Labels)
	}
	return s
}

// SetGroup creates or changes a group (PermOperate).
func (s *Server) SetGroup(ctx context.Context, call *Call, name string, spec *api.GroupSpec) (*api.Group, error) {
	const action = "group.set"
	target := groupScope(name)
	if err := api.ValidateGroupName(name); err != nil {
		var ae *api.Error
		errors.As(err, &ae)
		return nil, s.adminRefused(ctx, call, action, target, ae)
	}
	lifetime := time.Duration(spec.CertLifetimeSeconds) * time.Second
	if lifetime != 0 && (lifetime < pki.MinLeafLifetime || lifetime > pki.MaxLeafLifetime) {
		return nil, s.adminRefused(ctx, call, action, target, api.Errorf(api.CodeBadRequest, "cert lifetime %s is outside [%s, %s]", lifetime, pki.MinLeafLifetime, pki.MaxLeafLifetime))
	}
	mode := spec.MeasuredBoot
	if mode == api.MeasuredBootOff {
		mode = "" // off is the default: stored as such
	}
	var required []int
	if len(spec.RequiredPCRs) > 0 {
		required = slices.Sorted(slices.Values(spec.RequiredPCRs))
	}
	now := s.cfg.Now()
	g, err := s.cfg.Store.UpdateGroup(ctx, name, func(prev *store.Group) (*store.Group, *store.AuditRecord, error) {
		if spec.ExpectUpdatedAt != nil {
			var cur time.Time
			by := "nobody"
			if prev != nil {
				cur, by = prev.UpdatedAt, prev.UpdatedBy
			}
			if !cur.Equal(*spec.ExpectUpdatedAt) {
				return nil, nil, api.Errorf(api.CodeConflict, "group %s was changed by %s at %s since it was read: read it again and repeat the change",
					name, by, cur.UTC().Format(time.RFC3339))
			}
		}
		next := &store.Group{Name: name, Admission: spec.Admission, CertLifetime: lifetime, Description: spec.Description,
			MeasuredBoot: mode, RequireSecureBoot: spec.RequireSecureBoot, RequiredPCRs: required,
			UpdatedAt: now, UpdatedBy: call.Principal.String()}
		rec := s.record(call, action, target)
		if prev != nil {
			rec.Before = mustJSON(groupView(prev))
		}
		rec.After = mustJSON(groupView(next))
		return next, rec, nil
	})
	if err != nil {
		return nil, s.adminFailed(ctx, call, action, target, err)
	}
	s.metrics.admin.WithLabelValues(action, "success").Inc()
	return s.groupOut(ctx, g)
}

func groupView(g *store.Group) map[string]any {
	return map[string]any{"admission": g.Admission, "cert_lifetime": g.CertLifetime.String(), "description": g.Description,
		"measured_boot": measuredBootMode(g.MeasuredBoot), "require_secure_boot": g.RequireSecureBoot, "required_pcrs": g.RequiredPCRs}
}

// measuredBootMode names a stored mode ("" is off).
func measuredBootMode(m string) string {
	if m == "" {
		return api.MeasuredBootOff
	}
	return m
}

func (s *Server) groupOut(ctx context.Context, g *store.Group) (*api.Group, error) {
	out := &api.Group{Name: g.Name, Defined: !g.UpdatedAt.IsZero(), UpdatedAt: g.UpdatedAt, UpdatedBy: g.UpdatedBy,
		GroupSpec: api.GroupSpec{Admission: g.Admission, CertLifetimeSeconds: int64(g.CertLifetime / time.Second), Description: g.Description,
			MeasuredBoot: measuredBootMode(g.MeasuredBoot), RequireSecureBoot: g.RequireSecureBoot, RequiredPCRs: g.RequiredPCRs}}
	cv, err := s.cfg.Store.Config(ctx, groupScope(g.Name), 0)
	if err == nil {
		out.ConfigVersion = cv.Version
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if err := s.cfg.Store.FirmwareReferences(ctx, g.Name, store.FirmwareKey{}, func(r *store.FirmwareReference) bool {
		if r.Active() {
			out.FirmwareReferences++
		}
		return true
	}); err != nil {
		return nil, err
	}
	return out, nil
}

// GetGroup returns a group, or its defaults if it has no record (PermRead).
func (s *Server) GetGroup(ctx context.Context, name string) (*api.Group, error) {
	if err := api.ValidateGroupName(name); err != nil {
		return nil, err
	}
	g, err := s.cfg.Store.Group(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		g = &store.Group{Name: name, Admission: s.cfg.DefaultAdmission}
	} else if err != nil {
		return nil, err
	}
	return s.groupOut(ctx, g)
}

// ListGroups lists the defined groups and the default group (PermRead).
func (s *Server) ListGroups(ctx context.Context, after string) (*api.GroupList, error) {
	out := &api.GroupList{DefaultGroup: s.cfg.DefaultGroup, Groups: []api.Group{}}
	var gs []*store.Group
	if err := s.cfg.Store.Groups(ctx, func(g *store.Group) bool {
		if g.Name <= after {
			return true
		}
		if len(gs) == api.MaxPageSize {
			out.NextAfter = gs[len(gs)-1].Name
			return false
		}
		gs = append(gs, g)
		return true
	}); err != nil {
		return nil, err
	}
	// The default group is listed, record or not, on the page its name
	// falls in.
	if d := s.cfg.DefaultGroup; d > after && (out.NextAfter == "" || d <= out.NextAfter) &&
		!slices.ContainsFunc(gs, func(g *store.Group) bool { return g.Name == d }) {
		gs = append(gs, &store.Group{Name: d, Admission: s.cfg.DefaultAdmission})
		slices.SortFunc(gs, func(a, b *store.Group) int { return cmpString(a.Name, b.Name) })
	}
	for _, g := range gs {
		v, err := s.groupOut(ctx, g)
		if err != nil {
			return nil, err
		}
		out.Groups = append(out.Groups, *v)
	}
	return out, nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// IssueOperator signs an operator credential for the key in req.CSR
// (PermAdmin).
func (s *Server) IssueOperator(ctx context.Context, call *Call, req *api.OperatorIssueRequest) (*api.OperatorIssueResponse, error) {
	const action = "operator.issue"
	target := "operator/" + req.Role + "/" + req.Name
	role, err := pki.ParseRole(req.Role)
	if err != nil {
		return nil, s.adminRefused(ctx, call, action, target, api.Errorf(api.CodeBadRequest, "%v", err))
	}
	if err := pki.ValidateOperatorName(req.Name); err != nil {
		return nil, s.adminRefused(ctx, call, action, target, api.Errorf(api.CodeBadRequest, "%v", err))
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		return nil, s.adminRefused(ctx, call, action, target, api.Errorf(api.CodeBadRequest, "csr: %v", err))
	}
	leaf, err := s.cfg.CA.IssueOperatorForKey(role, req.Name, csr.PublicKey, time.Duration(req.LifetimeSeconds)*time.Second)
	if err != nil {
		if errors.Is(err, pki.ErrPublicKey) || errors.Is(err, pki.ErrLifetime) {
			return nil, s.adminRefused(ctx, call, action, target, api.Errorf(api.CodeBadRequest, "%v", err))
		}
		return nil, s.adminFailed(ctx, call, action, target, err)
	}
	rec := s.record(call, action, target)
	rec.After = mustJSON(map[string]any{"serial": leaf.SerialNumber.Text(16), "role": role, "name": req.Name, "not_after": leaf.NotAfter})
	if err := s.cfg.Store.AppendAudit(ctx, rec); err != nil {
		// No record, no credential: the certificate is not handed out.
		return nil, fmt.Errorf("recording operator credential: %w", err)
	}
	s.metrics.admin.WithLabelValues(action, "success").Inc()
	return &api.OperatorIssueResponse{Operator: pki.Operator{Name: req.Name, Role: role}.String(), Serial: leaf.SerialNumber.Text(16),
		NotAfter: leaf.NotAfter, CertificateChain: [][]byte{leaf.Raw, s.cfg.CA.Intermediate().Raw}, RootCertificate: s.cfg.CA.Root().Raw}, nil
}

// RevokeOperator revokes an operator credential by its serial (admin
// only): from then on every admin call made with it is refused, by every
// server sharing the store. Revoking a serial again changes nothing.
func (s *Server) RevokeOperator(ctx context.Context, call *Call, req *api.OperatorRevokeRequest) (*api.OperatorRevokeResponse, error) {
	const action = "operator.revoke"
	target := "operator-certificate/" + req.Serial
	if req.Serial == call.Principal.Serial {
		return nil, s.adminRefused(ctx, call, action, target, api.Errorf(api.CodeBadRequest,
			"serial %s is the credential this call is made with: revoke it with another admin credential", req.Serial))
	}
	rev := &store.OperatorRevocation{Serial: req.Serial, RevokedAt: s.cfg.Now(), RevokedBy: call.Principal.String(), Reason: req.Reason}
	rec := s.record(call, action, target)
	rec.After = mustJSON(rev)
	changed, err := s.cfg.Store.RevokeOperator(ctx, rev, rec)
	if err != nil {
		return nil, s.adminFailed(ctx, call, action, target, err)
	}
	if !changed {
		prev, err := s.cfg.Store.OperatorRevocation(ctx, req.Serial)
		if err != nil {
			return nil, s.adminFailed(ctx, call, action, target, err)
		}
		rev = prev
	}
	s.metrics.admin.WithLabelValues(action, "success").Inc()
	return &api.OperatorRevokeResponse{Serial: req.Serial, Changed: changed, RevokedAt: rev.RevokedAt}, nil
}

func (s *Server) randomID() (string, error) {
	b := make([]byte, 16)
	if _, err := s.cfg.Rand.Read(b); err != nil {
		return "", fmt.Errorf("reading randomness: %w", err)
	}
	return hex.EncodeToString(b), nil
}
