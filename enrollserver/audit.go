package enrollserver

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Principal kinds: who is calling the admin API.
const (
	PrincipalOperator    = "operator"
	PrincipalDevice      = "device"
	PrincipalAnonymous   = "anonymous"
	PrincipalCertificate = "certificate"
	PrincipalSystem      = "system"
)

// Principal is the authenticated caller of an admin call.
type Principal struct {
	Kind string
	Name string
	Role pki.Role
	// Serial is an operator certificate's serial (lowercase hex), which
	// Authorize looks up among the revoked ones; "" for principals not
	// made from a certificate.
	Serial string
}

func (p Principal) String() string {
	return api.AuditActor{Kind: p.Kind, Name: p.Name, Role: string(p.Role)}.String()
}

// PrincipalFromCertificate names the holder of a client certificate that
// crypto/tls has verified against the CA's root (nil: no certificate).
func (s *Server) PrincipalFromCertificate(leaf *x509.Certificate) Principal {
	if leaf == nil {
		return Principal{Kind: PrincipalAnonymous}
	}
	if op, err := pki.OperatorFromCertificate(leaf, s.TrustDomain()); err == nil {
		return Principal{Kind: PrincipalOperator, Name: op.Name, Role: op.Role, Serial: leaf.SerialNumber.Text(16)}
	}
	if id, err := pki.DeviceIDFromCertificate(leaf, s.TrustDomain()); err == nil {
		return Principal{Kind: PrincipalDevice, Name: id}
	}
	return Principal{Kind: PrincipalCertificate, Name: leaf.SerialNumber.Text(16)}
}

// Call is one admin call: who, and the correlation ID it travels with.
type Call struct {
	Principal     Principal
	CorrelationID string
}

// Permission is what an admin endpoint requires.
type Permission int

// Permissions, each granted to some roles.
const (
	// PermRead: list and inspect (every role).
	PermRead Permission = iota + 1
	// PermImport: import and pre-register identities (factory, admin).
	PermImport
	// PermOperate: approve, deny, revoke, readmit; groups and config
	// (operator, admin).
	PermOperate
	// PermAdmin: issue operator credentials (admin).
	PermAdmin
)

func (p Permission) String() string {
	switch p {
	case PermRead:
		return "read"
	case PermImport:
		return "import"
	case PermOperate:
		return "operate"
	case PermAdmin:
		return "admin"
	}
	return "unknown"
}

// RolePermits reports whether role grants perm. Unknown roles and
// permissions grant nothing.
func RolePermits(role pki.Role, perm Permission) bool {
	switch role {
	case pki.RoleAdmin:
		return perm >= PermRead && perm <= PermAdmin
	case pki.RoleOperator:
		return perm == PermRead || perm == PermOperate
	case pki.RoleFactory:
		return perm == PermRead || perm == PermImport
	case pki.RoleViewer:
		return perm == PermRead
	}
	return false
}

// rolesWith lists the roles that grant perm, for error messages.
func rolesWith(perm Permission) []string {
	var out []string
	for _, r := range pki.Roles() {
		if RolePermits(r, perm) {
			out = append(out, string(r))
		}
	}
	return out
}

// Authorize checks the caller may perform action (with perm) and audits a
// refusal. Transport adapters call it before reading the request body.
func (s *Server) Authorize(ctx context.Context, call *Call, perm Permission, action, target string) error {
	var err *api.Error
	switch call.Principal.Kind {
	case PrincipalOperator:
		if err = s.checkOperatorRevocation(ctx, call.Principal); err != nil {
			// A revoked credential bounds nothing: its refusals are
			// rate-limited as a stranger's are.
			s.metrics.admin.WithLabelValues(action, "refused").Inc()
			s.recordRefusal(ctx, call, action, target, err, false)
			return err
		}
		if !RolePermits(call.Principal.Role, perm) {
			err = api.Errorf(api.CodeForbidden, "%s may not %s (needs role %v): ask an admin for a credential with `enrollctl operators issue`", call.Principal, action, rolesWith(perm))
		}
	case PrincipalAnonymous:
		err = api.Errorf(api.CodeUnauthenticated, "admin calls need an operator certificate issued by this server (enrolld writes the first one into <data-dir>/admin)")
	case PrincipalDevice:
		err = api.Errorf(api.CodeForbidden, "device %s may not call the admin API: use an operator certificate", call.Principal.Name)
	default:
		err = api.Errorf(api.CodeForbidden, "client certificate %s names no operator", call.Principal.Name)
	}
	if err != nil {
		s.metrics.admin.WithLabelValues(action, "refused").Inc()
		s.auditRefusal(ctx, call, action, target, err)
		return err
	}
	return nil
}

// checkOperatorRevocation refuses an operator certificate an admin
// revoked (enrollctl operators revoke). If the store cannot say, the call
// is refused too.
func (s *Server) checkOperatorRevocation(ctx context.Context, p Principal) *api.Error {
	if p.Serial == "" {
		return nil
	}
	rev, err := s.cfg.Store.OperatorRevocation(ctx, p.Serial)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		s.log.LogAttrs(ctx, slog.LevelError, "checking an operator credential", slog.String("serial", p.Serial), slog.String("err", err.Error()))
		return api.Errorf(api.CodeUnavailable, "cannot check whether credential %s is revoked; try again", p.Serial)
	}
	return api.Errorf(api.CodeUnauthenticated, "the credential of %s (serial %s) was revoked at %s by %s: ask an admin for a new one",
		p, p.Serial, rev.RevokedAt.UTC().Format(time.RFC3339), rev.RevokedBy)
}

// RecordRefusal audits an admin write refused after authorization, such as
// a malformed body. Server methods audit their own refusals.
func (s *Server) RecordRefusal(ctx context.Context, call *Call, action, target string, err error) {
	s.metrics.admin.WithLabelValues(action, "refused").Inc()
	s.auditRefusal(ctx, call, action, target, err)
}

// Bounds of what a refused admin call writes into the audit log: the
// action and target come from the request's path, which an unauthenticated
// client chooses.
const (
	maxAuditActionLen = 64
	maxAuditTargetLen = 256
)

// auditRefusal appends a refused call to the audit log. A refusal of an
// authenticated operator is always recorded (holding a credential bounds
// it, and a privilege escalation attempt must not go unseen); any other
// caller's is within its own rate limit (adminRefusal), so that no flood of
// anonymous calls can suppress the records of operators or of devices.
func (s *Server) auditRefusal(ctx context.Context, call *Call, action, target string, err error) {
	s.recordRefusal(ctx, call, action, target, err, call.Principal.Kind == PrincipalOperator)
}

// recordRefusal appends a refused call's audit record: always, or within
// the adminRefusal rate limit.
func (s *Server) recordRefusal(ctx context.Context, call *Call, action, target string, err error, always bool) {
	code, msg := api.CodeInternal, err.Error()
	var ae *api.Error
	if errors.As(err, &ae) {
		code, msg = ae.Code, ae.Message
	}
	outcome := "refused"
	if code == api.CodeInternal || code == api.CodeUnavailable {
		outcome = "error"
	}
	rec := &store.AuditRecord{Time: s.cfg.Now(), ActorKind: call.Principal.Kind, ActorName: call.Principal.Name,
		ActorRole: string(call.Principal.Role), Action: clip(action, maxAuditActionLen), Target: clip(target, maxAuditTargetLen),
		Outcome: outcome, Code: string(code), Message: msg, CorrelationID: call.CorrelationID}
	if always {
		s.appendAudit(ctx, rec)
		return
	}
	s.appendLimited(ctx, s.adminRefusal, rec)
}

// clip cuts s to at most n bytes on a rune boundary, marking the cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// auditDeviceRefusal audits a device's refused enrollment when it bears on
// identity or an operator's decision (forged EK certificates, failed
// activation, revoked or denied devices), within the refusal rate limit.
func (s *Server) auditDeviceRefusal(ctx context.Context, sess *store.Session, action string, code api.Code, msg string) {
	s.appendLimited(ctx, s.refusal, &store.AuditRecord{Time: s.cfg.Now(), ActorKind: PrincipalDevice, ActorName: sess.DeviceID,
		Action: action, Target: sess.DeviceID, Outcome: "refused", Code: string(code), Message: msg, CorrelationID: sess.CorrelationID})
}

// appendLimited appends rec if bucket has a token, else counts it in
// edgeenroll_audit_suppressed_total.
func (s *Server) appendLimited(ctx context.Context, bucket *tokenBucket, rec *store.AuditRecord) {
	if !bucket.take() {
		s.metrics.auditSuppressed.Inc()
		return
	}
	s.appendAudit(ctx, rec)
}

// appendAudit appends rec, logging a failure (the call's outcome stands).
func (s *Server) appendAudit(ctx context.Context, rec *store.AuditRecord) {
	if err := s.cfg.Store.AppendAudit(context.WithoutCancel(ctx), rec); err != nil {
		s.log.LogAttrs(ctx, slog.LevelError, "appending audit record", slog.String("correlation_id", rec.CorrelationID), slog.String("err", err.Error()))
	}
}

// actor returns the audit fields of a call.
func actorOf(call *Call) (kind, name, role string) {
	return call.Principal.Kind, call.Principal.Name, string(call.Principal.Role)
}

func (s *Server) record(call *Call, action, target string) *store.AuditRecord {
	k, n, r := actorOf(call)
	return &store.AuditRecord{Time: s.cfg.Now(), ActorKind: k, ActorName: n, ActorRole: r, Action: action, Target: target,
		Outcome: "success", CorrelationID: call.CorrelationID}
}

// tokenBucket is a small rate limiter.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
	now    func() time.Time
}

func newTokenBucket(rate, burst float64, now func() time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, now: now}
}

func (b *tokenBucket) take() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if !b.last.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// AuditLog reads the audit log (PermRead), filtered.
func (s *Server) AuditLog(ctx context.Context, q AuditQuery) (*api.AuditList, error) {
	limit := pageSize(q.Limit)
	out := &api.AuditList{Records: []api.AuditRecord{}}
	scanned := 0
	var last uint64
	err := s.cfg.Store.AuditLog(ctx, q.After, func(r *store.AuditRecord) bool {
		scanned++
		last = r.Seq
		if q.matches(r) {
			out.Records = append(out.Records, auditView(r))
		}
		return len(out.Records) < limit && scanned < MaxAuditScan
	})
	if err != nil {
		return nil, err
	}
	if len(out.Records) == limit || scanned >= MaxAuditScan {
		out.NextPageToken = uintToken(last)
	}
	return out, nil
}

// AuditQuery filters the audit log. Empty fields match everything; Actor
// matches a name or role/name, Action a prefix ("device." matches every
// device action).
type AuditQuery struct {
	After  uint64
	Since  time.Time
	Actor  string
	Action string
	Target string
	Limit  int
}

func (q AuditQuery) matches(r *store.AuditRecord) bool {
	if !q.Since.IsZero() && r.Time.Before(q.Since) {
		return false
	}
	if q.Actor != "" && q.Actor != r.ActorName && q.Actor != r.ActorRole+"/"+r.ActorName && q.Actor != r.ActorKind {
		return false
	}
	if q.Action != "" && !(r.Action == q.Action || (len(q.Action) > 0 && q.Action[len(q.Action)-1] == '.' && len(r.Action) > len(q.Action) && r.Action[:len(q.Action)] == q.Action)) {
		return false
	}
	if q.Target != "" && r.Target != q.Target {
		return false
	}
	return true
}

func auditView(r *store.AuditRecord) api.AuditRecord {
	return api.AuditRecord{Seq: r.Seq, Time: r.Time, Actor: api.AuditActor{Kind: r.ActorKind, Name: r.ActorName, Role: r.ActorRole},
		Action: r.Action, Target: r.Target, Outcome: r.Outcome, Code: api.Code(r.Code), Message: r.Message,
		Before: r.Before, After: r.After, CorrelationID: r.CorrelationID}
}
