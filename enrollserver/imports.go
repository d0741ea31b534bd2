package enrollserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/attest"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Factory imports are staged: StartImport opens one, StageImport adds
// bounded chunks of rows (each row validated and its device ID derived as
// it arrives; bad rows are kept as row errors), and CommitImport applies
// every staged row in one store transaction — all or nothing unless the
// import is partial. A large file thus crosses the network in bounded
// requests yet commits atomically. Staged imports expire after
// api.ImportStagingTTL; at most api.MaxOpenImports are open at once, and
// api.MaxOpenImportsPerOperator of one operator's. ListImports shows the
// open ones, so that a stuck one can be aborted.

// StartImport opens a staged import (PermImport).
func (s *Server) StartImport(ctx context.Context, call *Call, req *api.ImportStartRequest) (*api.ImportStartResponse, error) {
	id, err := s.randomID()
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	b := &store.ImportBatch{ID: id, Operator: call.Principal.String(), Source: req.Source, SHA256: req.SHA256,
		Partial: req.Partial, DryRun: req.DryRun, CreatedAt: now, ExpiresAt: now.Add(api.ImportStagingTTL), CorrelationID: call.CorrelationID}
	if err := s.cfg.Store.CreateImport(ctx, b, api.MaxOpenImports, api.MaxOpenImportsPerOperator); err != nil {
		var held string
		switch {
		case errors.Is(err, store.ErrTooManyImports):
			held = fmt.Sprintf("%d imports are staged already", api.MaxOpenImports)
		case errors.Is(err, store.ErrOperatorImports):
			held = fmt.Sprintf("%s has %d imports staged already, its share", call.Principal, api.MaxOpenImportsPerOperator)
		default:
			return nil, err
		}
		retry, first := s.importSlotFrees(ctx, call, now)
		msg := held
		if first != nil {
			from := ""
			if first.Source != "" {
				from = " (" + first.Source + ")"
			}
			msg += fmt.Sprintf("; the first to expire is import %s%s, started by %s, at %s (enrollctl import --abort %s frees it now, by its starter or an admin)",
				first.ID, from, first.Operator, first.ExpiresAt.UTC().Format(time.RFC3339), first.ID)
		}
		msg += fmt.Sprintf("; each frees its slot when committed or aborted, at the latest %s after it started (enrollctl import --list shows them)", api.ImportStagingTTL)
		return nil, s.adminRefused(ctx, call, "import.start", req.Source, &api.Error{Code: api.CodeBusy, RetryAfterSeconds: retry, Message: msg})
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "import started", slog.String("correlation_id", call.CorrelationID), slog.String("operator", call.Principal.String()),
		slog.String("import_id", id), slog.String("source", req.Source), slog.Time("expires_at", b.ExpiresAt))
	return &api.ImportStartResponse{ImportID: id, ExpiresAt: b.ExpiresAt, MaxRowsPerChunk: api.MaxImportRowsPerChunk, MaxChunkBytes: api.MaxImportChunkBytes}, nil
}

// listImportsLimit bounds the staged imports read to list them. More than
// api.MaxOpenImports are open only after the cap was lowered, or while
// enrolld replicas' clocks disagree about which expired; a page's worth
// lists those too.
const listImportsLimit = api.MaxPageSize

// importSlotFrees says when a start refused for want of a slot may try
// again, and which import frees the slot it needs: the first to expire
// among the caller's own imports if they fill its share
// (ErrOperatorImports, and with ErrTooManyImports a slot another's frees
// would not let it start either), else among all the open ones
// (ErrTooManyImports). The wait is rounded up to whole seconds within
// 1 s..api.ImportStagingTTL; it is 1 s, naming none, if the imports no
// longer fill either limit (some ended since the refusal), and
// api.ImportStagingTTL, naming none, if the store cannot list them.
func (s *Server) importSlotFrees(ctx context.Context, call *Call, now time.Time) (int, *store.ImportBatch) {
	ttl := int(api.ImportStagingTTL / time.Second)
	open, err := s.cfg.Store.ListImports(ctx, now, listImportsLimit)
	if err != nil {
		s.log.LogAttrs(ctx, slog.LevelWarn, "listing staged imports for a busy answer", slog.String("correlation_id", call.CorrelationID), slog.String("err", err.Error()))
		return ttl, nil
	}
	var first, firstOwn *store.ImportBatch
	own := 0
	for _, b := range open {
		if first == nil || b.ExpiresAt.Before(first.ExpiresAt) {
			first = b
		}
		if b.Operator == call.Principal.String() {
			own++
			if firstOwn == nil || b.ExpiresAt.Before(firstOwn.ExpiresAt) {
				firstOwn = b
			}
		}
	}
	switch {
	case own >= api.MaxOpenImportsPerOperator:
		first = firstOwn
	case len(open) >= api.MaxOpenImports:
		// first stays the first of all to expire.
	default:
		return 1, nil
	}
	secs := int((first.ExpiresAt.Sub(now) + time.Second - 1) / time.Second)
	return min(max(secs, 1), ttl), first
}

// ListImports lists the staged imports still open, oldest first
// (PermImport): the caller's own, or for an admin, who may abort any of
// them, every operator's.
func (s *Server) ListImports(ctx context.Context, call *Call) (*api.ImportList, error) {
	open, err := s.cfg.Store.ListImports(ctx, s.cfg.Now(), listImportsLimit)
	if err != nil {
		return nil, err
	}
	all := call.Principal.Kind == PrincipalOperator && RolePermits(call.Principal.Role, PermAdmin)
	out := &api.ImportList{Imports: []api.ImportSummary{}}
	for _, b := range open {
		if !all && b.Operator != call.Principal.String() {
			continue
		}
		out.Imports = append(out.Imports, api.ImportSummary{ImportID: b.ID, Operator: b.Operator, Source: b.Source, SHA256: b.SHA256,
			Partial: b.Partial, DryRun: b.DryRun, CreatedAt: b.CreatedAt, ExpiresAt: b.ExpiresAt, Staged: b.Staged, Rejected: len(b.Rejected)})
	}
	return out, nil
}

// ownImport returns a staged import if call opened it.
func (s *Server) ownImport(ctx context.Context, call *Call, id string) (*store.ImportBatch, error) {
	b, err := s.cfg.Store.Import(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, api.Errorf(api.CodeNotFound, "no staged import %.40q (expired after %s, committed or aborted): start the import again", id, api.ImportStagingTTL)
	} else if err != nil {
		return nil, err
	}
	if b.Operator != call.Principal.String() {
		return nil, api.Errorf(api.CodeForbidden, "import %s belongs to %s", id, b.Operator)
	}
	return b, nil
}

// StageImport validates a chunk and stages its good rows (PermImport).
func (s *Server) StageImport(ctx context.Context, call *Call, id string, req *api.ImportRowsRequest) (*api.ImportRowsResponse, error) {
	if _, err := s.ownImport(ctx, call, id); err != nil {
		return nil, err
	}
	rows, rejected := s.stageRows(req.Rows)
	_, err := s.cfg.Store.StageImport(ctx, id, s.cfg.Now(), rows, rejected, api.MaxImportRows)
	switch {
	case errors.Is(err, store.ErrImportExpired), errors.Is(err, store.ErrNotFound):
		return nil, api.Errorf(api.CodeNotFound, "staged import %s expired: start the import again", id)
	case errors.Is(err, store.ErrImportTooLarge):
		return nil, api.Errorf(api.CodeBadRequest, "an import holds at most %d rows: split the file", api.MaxImportRows)
	case errors.Is(err, store.ErrExists):
		return nil, api.Errorf(api.CodeBadRequest, "%v: each line is sent once", err)
	case err != nil:
		return nil, err
	}
	out := &api.ImportRowsResponse{Staged: len(rows)}
	for _, r := range rejected[:min(len(rejected), api.MaxReportedRowErrors)] {
		out.Rejected = append(out.Rejected, apiRowError(r))
	}
	return out, nil
}

// stageRows validates rows and derives device IDs from EK certificates.
func (s *Server) stageRows(in []api.ImportRow) ([]*store.StagedRow, []store.RowError) {
	rows := make([]*store.StagedRow, 0, len(in))
	var rejected []store.RowError
	for i := range in {
		r := &in[i]
		if err := api.ValidateImportRow(r); err != nil {
			rejected = append(rejected, rowErr(r.Line, err))
			continue
		}
		id := r.DeviceID
		if len(r.EKCertificate) > 0 {
			certID, err := ekCertificateDeviceID(r.EKCertificate)
			if err != nil {
				rejected = append(rejected, store.RowError{Line: r.Line, Code: string(api.CodeBadRequest), Reason: err.Error()})
				continue
			}
			if id != "" && id != certID {
				rejected = append(rejected, store.RowError{Line: r.Line, Code: string(api.CodeBadRequest),
					Reason: fmt.Sprintf("ek_hash %s is not the hash of the EK certificate's key (%s)", id, certID)})
				continue
			}
			id = certID
		}
		rows = append(rows, &store.StagedRow{Line: r.Line, DeviceID: id, Serial: r.Serial, Group: r.Group, Labels: r.Labels})
	}
	return rows, rejected
}

// ekCertificateDeviceID parses an EK certificate (not verifying its chain:
// importing it is the factory's statement of trust) and returns the device
// ID of its key, refusing keys no TPM enrollment would accept.
func ekCertificateDeviceID(der []byte) (string, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", fmt.Errorf("EK certificate does not parse: %v", err)
	}
	pub, err := attest.ParseEKPublic(cert.RawSubjectPublicKeyInfo)
	if err != nil {
		return "", fmt.Errorf("EK certificate key: %v", err)
	}
	return attest.DeviceID(pub)
}

func apiRowError(r store.RowError) api.RowError {
	return api.RowError{Line: r.Line, Code: api.Code(r.Code), Reason: r.Reason}
}

// CommitImport applies a staged import in one transaction (PermImport):
// every row, or with Partial the good ones; a dry run writes nothing. The
// commit (applied or refused, not a dry run) is one audit record.
func (s *Server) CommitImport(ctx context.Context, call *Call, id string, req *api.ImportCommitRequest) (*api.ImportResult, error) {
	const action = "import.commit"
	b, err := s.ownImport(ctx, call, id)
	if err != nil {
		return nil, s.adminFailed(ctx, call, action, "import/"+id, err)
	}
	target := "import/" + id
	if b.Source != "" {
		target += " (" + b.Source + ")"
	}
	now := s.cfg.Now()
	out := &api.ImportResult{ImportID: id, DryRun: b.DryRun, Partial: b.Partial}
	var refusal *api.Error
	err = s.cfg.Store.CommitImport(ctx, id, now, func(b *store.ImportBatch, rows []*store.StagedRow, r store.PreregReader) (*store.PreregPlan, error) {
		res, err := mergeRows(rows, r, now)
		if err != nil {
			return nil, err
		}
		all := append(slices.Clone(b.Rejected), res.rejected...)
		slices.SortFunc(all, func(x, y store.RowError) int { return x.Line - y.Line })
		*out = api.ImportResult{ImportID: id, DryRun: b.DryRun, Partial: b.Partial, Rows: b.Staged + len(b.Rejected),
			Created: res.created, Updated: res.updated, Unchanged: res.unchanged, RejectedTotal: len(all), UndefinedGroups: res.undefinedGroups}
		for _, e := range all[:min(len(all), api.MaxReportedRowErrors)] {
			out.Rejected = append(out.Rejected, apiRowError(e))
		}
		refusal = nil
		if b.DryRun {
			return nil, nil
		}
		rec := s.record(call, action, target)
		rec.Time = now
		summary := map[string]any{"rows": out.Rows, "created": out.Created, "updated": out.Updated, "unchanged": out.Unchanged,
			"rejected": out.RejectedTotal, "client_rejected": req.ClientRejected, "partial": b.Partial, "sha256": b.SHA256}
		if n := min(len(all), 20); n > 0 {
			summary["first_rejected"] = all[:n]
		}
		plan := &store.PreregPlan{Audit: s.conflictAudits(call, res)}
		if bad := len(all) + req.ClientRejected; bad > 0 && !b.Partial {
			refusal = api.Errorf(api.CodeBadRequest, "%d rows refused (%d by enrollctl before sending); nothing was imported (fix them, or use --partial)", bad, req.ClientRejected)
			rec.Outcome, rec.Code, rec.Message = "refused", string(refusal.Code), refusal.Message
			summary["created"], summary["updated"] = 0, 0
		} else {
			plan.Put = res.put
			out.Applied = len(res.put) > 0
		}
		rec.After = mustJSON(summary)
		plan.Audit = append(plan.Audit, rec)
		return plan, nil
	})
	switch {
	case errors.Is(err, store.ErrImportExpired), errors.Is(err, store.ErrNotFound):
		return nil, s.adminRefused(ctx, call, action, target, api.Errorf(api.CodeNotFound, "staged import %s expired: start the import again", id))
	case err != nil:
		return nil, s.adminFailed(ctx, call, action, target, err)
	}
	if refusal != nil {
		s.metrics.admin.WithLabelValues(action, "refused").Inc()
		// The result travels with the refusal: the client prints every
		// bad row.
		out.Created, out.Updated = 0, 0
		return out, nil
	}
	if !b.DryRun {
		s.metrics.admin.WithLabelValues(action, "success").Inc()
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "import committed", slog.String("correlation_id", call.CorrelationID), slog.String("operator", call.Principal.String()),
		slog.String("import_id", id), slog.Bool("dry_run", b.DryRun), slog.Int("created", out.Created), slog.Int("updated", out.Updated),
		slog.Int("unchanged", out.Unchanged), slog.Int("rejected", out.RejectedTotal))
	return out, nil
}

// AbortImport discards a staged import (PermImport).
func (s *Server) AbortImport(ctx context.Context, call *Call, id string) error {
	_, err := s.ownImport(ctx, call, id)
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeForbidden && call.Principal.Kind == PrincipalOperator && RolePermits(call.Principal.Role, PermAdmin) {
		// An admin may clear another operator's staged import: a
		// station that died mid-import holds one of the MaxOpenImports
		// slots until the import expires.
		rec := s.record(call, "import.abort", "import/"+id)
		rec.Message = ae.Message
		if err := s.cfg.Store.AppendAudit(ctx, rec); err != nil {
			return fmt.Errorf("recording the abort: %w", err)
		}
		err = nil
	}
	if err != nil {
		return err
	}
	if err := s.cfg.Store.DeleteImport(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	return nil
}

// PurgeExpired removes expired sessions, pending records (audited) and
// staged imports; the daemon calls it periodically.
func (s *Server) PurgeExpired(ctx context.Context) (sessions, pending, imports int, err error) {
	now := s.cfg.Now()
	if sessions, err = s.cfg.Store.PurgeExpiredSessions(ctx, now); err != nil {
		return
	}
	if pending, err = s.cfg.Store.PurgeExpiredPending(ctx, now, func(d *store.Device) *store.AuditRecord {
		return &store.AuditRecord{Time: now, ActorKind: PrincipalSystem, Action: "device.pending_expired", Target: d.ID,
			Outcome: "success", Before: mustJSON(deviceView(d)), Message: "no operator decided within the pending TTL"}
	}); err != nil {
		return
	}
	imports, err = s.cfg.Store.PurgeExpiredImports(ctx, now)
	return
}
