package enrollserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Approved firmware references: the admin side of measured boot. Like
// every admin write, each call is authorised by the transport adapter and
// leaves one audit record, written in the transaction of its change (or a
// refusal record).

// AddFirmware approves firmware for a group (PermOperate): the last
// verified measurement of a golden device (req.FromDevice), or listed
// digests, all or nothing. An active digest named again is unchanged (or
// renamed), a retired one is reactivated. Names are unique among a group's
// active references, and a group holds at most api.MaxFirmwareReferences.
func (s *Server) AddFirmware(ctx context.Context, call *Call, req *api.FirmwareAddRequest) (*api.FirmwareAddResponse, error) {
	const action = "firmware.add"
	target := groupScope(req.Group)
	type wanted struct{ digest, name, version, source string }
	var want []wanted
	if req.FromDevice != "" {
		w, err := s.goldenFirmware(ctx, req)
		if err != nil {
			var ae *api.Error
			if errors.As(err, &ae) {
				return nil, s.adminRefused(ctx, call, action, target, ae)
			}
			return nil, s.adminFailed(ctx, call, action, target, err)
		}
		want = append(want, wanted{w.Digest, w.Name, w.Version, req.FromDevice})
	} else {
		for _, r := range req.References {
			want = append(want, wanted{digest: r.Digest, name: r.Name})
		}
	}

	now := s.cfg.Now()
	by := call.Principal.String()
	var resp *api.FirmwareAddResponse
	err := s.cfg.Store.UpdateFirmware(ctx, req.Group, func(cur []*store.FirmwareReference) (*store.FirmwarePlan, error) {
		// The store may run this more than once: start from scratch.
		resp = &api.FirmwareAddResponse{Group: req.Group, References: []api.FirmwareReference{}}
		byDigest := make(map[string]*store.FirmwareReference, len(cur))
		for _, r := range cur {
			byDigest[r.Digest] = r
		}
		var put []*store.FirmwareReference
		var added, reactivated, renamed []string
		for _, w := range want {
			prev := byDigest[w.digest]
			var next store.FirmwareReference
			switch {
			case prev == nil:
				next = store.FirmwareReference{Group: req.Group, Digest: w.digest, Name: w.name, Version: w.version,
					SourceDevice: w.source, CreatedAt: now, CreatedBy: by}
				added = append(added, w.digest)
			case !prev.Active():
				next = *prev
				next.Name, next.RetiredAt, next.RetiredBy, next.RetireReason = w.name, time.Time{}, "", ""
				if w.version != "" {
					next.Version, next.SourceDevice = w.version, w.source
				}
				reactivated = append(reactivated, w.digest)
			case prev.Name != w.name:
				next = *prev
				next.Name = w.name
				renamed = append(renamed, w.digest)
			default:
				resp.Unchanged++
				resp.References = append(resp.References, firmwareRefView(prev))
				continue
			}
			byDigest[w.digest] = &next
			put = append(put, &next)
			resp.References = append(resp.References, firmwareRefView(&next))
		}

		// The group's active references after the change: names unique,
		// within the cap.
		names := map[string]string{}
		active := 0
		for _, r := range byDigest {
			if !r.Active() {
				continue
			}
			active++
			if other, dup := names[r.Name]; dup {
				a, b := min(other, r.Digest), max(other, r.Digest)
				return nil, api.Errorf(api.CodeConflict, "group %s would have two active references named %q (%s and %s): choose another name", req.Group, r.Name, a, b)
			}
			names[r.Name] = r.Digest
		}
		if active > api.MaxFirmwareReferences {
			return nil, api.Errorf(api.CodeConflict, "group %s would have %d active firmware references, limit is %d: retire old ones first (`enrollctl firmware retire`)", req.Group, active, api.MaxFirmwareReferences)
		}
		resp.Added, resp.Reactivated, resp.Renamed = len(added), len(reactivated), len(renamed)

		rec := s.record(call, action, target)
		rec.Time = now
		after := map[string]any{"added": orEmpty(added), "reactivated": orEmpty(reactivated), "renamed": orEmpty(renamed),
			"unchanged": resp.Unchanged, "active": active}
		if req.FromDevice != "" {
			after["from_device"] = req.FromDevice
		}
		if req.Comment != "" {
			after["comment"] = req.Comment
		}
		rec.After = mustJSON(after)
		return &store.FirmwarePlan{Put: put, Audit: []*store.AuditRecord{rec}}, nil
	})
	if err != nil {
		return nil, s.adminFailed(ctx, call, action, target, err)
	}
	s.metrics.admin.WithLabelValues(action, "success").Inc()
	s.log.LogAttrs(ctx, slog.LevelInfo, "firmware approved", slog.String("correlation_id", call.CorrelationID),
		slog.String("operator", by), slog.String("group", req.Group), slog.Int("added", resp.Added), slog.Int("reactivated", resp.Reactivated))
	return resp, nil
}

// goldenFirmware is what a golden device last measured, as a reference to
// add: only a measurement whose log replayed to a verified quote has a
// digest.
func (s *Server) goldenFirmware(ctx context.Context, req *api.FirmwareAddRequest) (*store.FirmwareReference, error) {
	d, err := s.cfg.Store.Device(ctx, req.FromDevice)
	if errors.Is(err, store.ErrNotFound) {
		return nil, api.Errorf(api.CodeNotFound, "no device %s: the golden device must try to enroll first (see `enrollctl devices list`)", req.FromDevice)
	} else if err != nil {
		return nil, fmt.Errorf("reading device: %w", err)
	}
	fw := d.Firmware
	if fw == nil || fw.Digest == "" {
		why := "it never sent a TCG event log"
		if fw != nil {
			why = fmt.Sprintf("its last event log (%s) was not verified: %s", fw.MeasuredAt.UTC().Format("2006-01-02T15:04:05Z"), fw.Reason)
		}
		return nil, api.Errorf(api.CodeConflict, "device %s has no verified firmware measurement to learn: %s", req.FromDevice, why)
	}
	name := req.Name
	if name == "" {
		v := fw.Version
		if v == "" {
			v = "firmware " + fw.Digest[:12]
		}
		name = fmt.Sprintf("%s (from device %s)", v, req.FromDevice[:12])
		if len(name) > api.MaxFirmwareNameLen {
			name = name[:api.MaxFirmwareNameLen]
		}
	}
	return &store.FirmwareReference{Digest: fw.Digest, Name: name, Version: fw.Version}, nil
}

// RetireFirmware retires approved references of a group (PermOperate),
// all or nothing: devices that boot that firmware are refused from their
// next enrollment or renewal on. The records stay, marked retired.
func (s *Server) RetireFirmware(ctx context.Context, call *Call, req *api.FirmwareRetireRequest) (*api.FirmwareRetireResponse, error) {
	const action = "firmware.retire"
	target := groupScope(req.Group)
	now := s.cfg.Now()
	by := call.Principal.String()
	var resp *api.FirmwareRetireResponse
	err := s.cfg.Store.UpdateFirmware(ctx, req.Group, func(cur []*store.FirmwareReference) (*store.FirmwarePlan, error) {
		resp = &api.FirmwareRetireResponse{Group: req.Group}
		byDigest := make(map[string]*store.FirmwareReference, len(cur))
		for _, r := range cur {
			byDigest[r.Digest] = r
		}
		var put []*store.FirmwareReference
		var retired []string
		for _, d := range req.Digests {
			prev := byDigest[d]
			switch {
			case prev == nil:
				return nil, api.Errorf(api.CodeNotFound, "group %s has no firmware reference %s: see `enrollctl firmware list --group %s`; nothing was retired", req.Group, d, req.Group)
			case !prev.Active():
				resp.Unchanged++
				continue
			}
			next := *prev
			next.RetiredAt, next.RetiredBy, next.RetireReason = now, by, req.Reason
			byDigest[d] = &next
			put = append(put, &next)
			retired = append(retired, d)
		}
		for _, r := range byDigest {
			if r.Active() {
				resp.Active++
			}
		}
		resp.Retired = len(retired)
		rec := s.record(call, action, target)
		rec.Time = now
		after := map[string]any{"retired": orEmpty(retired), "unchanged": resp.Unchanged, "active": resp.Active}
		if req.Reason != "" {
			after["reason"] = req.Reason
		}
		rec.After = mustJSON(after)
		return &store.FirmwarePlan{Put: put, Audit: []*store.AuditRecord{rec}}, nil
	})
	if err != nil {
		return nil, s.adminFailed(ctx, call, action, target, err)
	}
	s.metrics.admin.WithLabelValues(action, "success").Inc()
	s.log.LogAttrs(ctx, slog.LevelInfo, "firmware retired", slog.String("correlation_id", call.CorrelationID),
		slog.String("operator", by), slog.String("group", req.Group), slog.Int("retired", resp.Retired), slog.Int("active", resp.Active))
	return resp, nil
}

// FirmwareQuery filters a firmware reference listing.
type FirmwareQuery struct {
	// Group limits the listing to one group ("" lists every group).
	Group string
	// Retired includes retired references.
	Retired bool
	// After is a page token (NextPageToken of the previous page).
	After string
	Limit int
}

// ListFirmware returns one page of firmware references in (group, digest)
// order (PermRead).
func (s *Server) ListFirmware(ctx context.Context, q FirmwareQuery) (*api.FirmwareList, error) {
	if q.Group != "" {
		if err := api.ValidateGroupName(q.Group); err != nil {
			return nil, err
		}
	}
	var after store.FirmwareKey
	if q.After != "" {
		g, d, ok := strings.Cut(q.After, "/")
		if !ok || api.ValidateGroupName(g) != nil || !api.ValidFirmwareDigest(d) {
			return nil, api.Errorf(api.CodeBadRequest, "page token %.80q is not one this server issued", q.After)
		}
		after = store.FirmwareKey{Group: g, Digest: d}
	}
	limit := pageSize(q.Limit)
	out := &api.FirmwareList{References: []api.FirmwareReference{}}
	scanned := 0
	var last *store.FirmwareReference
	err := s.cfg.Store.FirmwareReferences(ctx, q.Group, after, func(r *store.FirmwareReference) bool {
		scanned++
		last = r
		if q.Retired || r.Active() {
			out.References = append(out.References, firmwareRefView(r))
		}
		return len(out.References) < limit && scanned < MaxDeviceScan
	})
	if err != nil {
		return nil, fmt.Errorf("listing firmware references: %w", err)
	}
	if last != nil && (len(out.References) == limit || scanned >= MaxDeviceScan) {
		out.NextPageToken = last.Group + "/" + last.Digest
	}
	return out, nil
}

func firmwareRefView(r *store.FirmwareReference) api.FirmwareReference {
	return api.FirmwareReference{Group: r.Group, Digest: r.Digest, Name: r.Name, Version: r.Version, SourceDevice: r.SourceDevice,
		CreatedAt: r.CreatedAt, CreatedBy: r.CreatedBy, RetiredAt: r.RetiredAt, RetiredBy: r.RetiredBy, RetireReason: r.RetireReason}
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
