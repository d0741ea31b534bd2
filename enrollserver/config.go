package enrollserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Config bundles. A device's bundle comes from the newest stored version of
// the first scope that has one: "device/<id>", then "group/<name>"; else
// from Config.Bundles (the default). Version numbers come from one counter
// shared by every scope and start above the default's version, so a device
// that moves between scopes never sees its version go down (the agent
// refuses a rollback).

// placeholder matches ${name} or ${label:key} in a config template.
var placeholder = regexp.MustCompile(`\$\{([a-z_]+)(?::([A-Za-z0-9._:/-]+))?\}`)

// renderTemplate replaces placeholders in the string values (and keys) of a
// config object with the device's data. Replacing inside decoded strings,
// never in the raw text, keeps any value from changing the JSON structure.
// A config without "${" is returned byte for byte.
func renderTemplate(config json.RawMessage, d *store.Device) (json.RawMessage, error) {
	if !bytes.Contains(config, []byte("${")) {
		return config, nil
	}
	dec := json.NewDecoder(bytes.NewReader(config))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	var firstErr error
	sub := func(s string) string {
		return placeholder.ReplaceAllStringFunc(s, func(m string) string {
			p := placeholder.FindStringSubmatch(m)
			switch {
			case p[1] == "device_id" && p[2] == "":
				return d.ID
			case p[1] == "serial" && p[2] == "":
				return d.Serial
			case p[1] == "group" && p[2] == "":
				return d.Group
			case p[1] == "label" && p[2] != "":
				return d.Labels[p[2]]
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("unknown placeholder %s: use ${device_id}, ${serial}, ${group} or ${label:KEY}", m)
			}
			return m
		})
	}
	var walk func(any) any
	walk = func(x any) any {
		switch t := x.(type) {
		case string:
			return sub(t)
		case []any:
			for i := range t {
				t[i] = walk(t[i])
			}
			return t
		case map[string]any:
			out := make(map[string]any, len(t))
			for k, val := range t {
				out[sub(k)] = walk(val)
			}
			return out
		}
		return x
	}
	v = walk(v)
	if firstErr != nil {
		return nil, firstErr
	}
	return json.Marshal(v)
}

func deviceScope(id string) string { return "device/" + id }
func groupScope(g string) string   { return "group/" + g }

// deviceBundle returns the version and rendered config for d.
func (s *Server) deviceBundle(ctx context.Context, d *store.Device) (uint64, json.RawMessage, error) {
	cv, _, err := s.effectiveConfig(ctx, d)
	if err != nil {
		return 0, nil, err
	}
	if cv == nil {
		return s.cfg.Bundles.Bundle(ctx, d)
	}
	cfg, err := renderTemplate(cv.Config, d)
	if err != nil {
		return 0, nil, fmt.Errorf("rendering %s version %d: %w", cv.Scope, cv.Version, err)
	}
	return cv.Version, cfg, nil
}

// effectiveConfig returns the stored version a device gets and its scope,
// or nil and "default".
func (s *Server) effectiveConfig(ctx context.Context, d *store.Device) (*store.ConfigVersion, string, error) {
	for _, scope := range []string{deviceScope(d.ID), groupScope(d.Group)} {
		if strings.HasSuffix(scope, "/") {
			continue
		}
		cv, err := s.cfg.Store.Config(ctx, scope, 0)
		switch {
		case err == nil:
			return cv, scope, nil
		case !errors.Is(err, store.ErrNotFound):
			return nil, "", fmt.Errorf("reading config %s: %w", scope, err)
		}
	}
	return nil, "default", nil
}

// defaultVersion is the default bundle's version: stored versions go above.
func (s *Server) defaultVersion(ctx context.Context) (uint64, error) {
	v, _, err := s.cfg.Bundles.Bundle(ctx, &store.Device{})
	return v, err
}

// SetConfig stores a new config version for a group or device (PermOperate).
func (s *Server) SetConfig(ctx context.Context, call *Call, req *api.ConfigSetRequest) (*api.ConfigVersion, error) {
	const action = "config.set"
	scope := req.ConfigScope.String()
	// A template must render: check it against a sample device.
	if _, err := renderTemplate(req.Config, &store.Device{ID: strings.Repeat("0", 64), Group: "g", Labels: map[string]string{}}); err != nil {
		return nil, s.adminRefused(ctx, call, action, scope, api.Errorf(api.CodeBadRequest, "config template: %v", err))
	}
	return s.putConfig(ctx, call, action, scope, req.Config, req.Comment, 0)
}

// RollbackConfig stores a new version with an older version's content.
func (s *Server) RollbackConfig(ctx context.Context, call *Call, req *api.ConfigRollbackRequest) (*api.ConfigVersion, error) {
	const action = "config.rollback"
	scope := req.ConfigScope.String()
	old, err := s.cfg.Store.Config(ctx, scope, req.ToVersion)
	if errors.Is(err, store.ErrNotFound) {
		return nil, s.adminRefused(ctx, call, action, scope, api.Errorf(api.CodeNotFound, "%s has no version %d: see `enrollctl config history`", scope, req.ToVersion))
	} else if err != nil {
		return nil, err
	}
	comment := req.Comment
	if comment == "" {
		comment = fmt.Sprintf("rollback to version %d", req.ToVersion)
	}
	return s.putConfig(ctx, call, action, scope, old.Config, comment, old.Version)
}

func (s *Server) putConfig(ctx context.Context, call *Call, action, scope string, config json.RawMessage, comment string, from uint64) (*api.ConfigVersion, error) {
	floor, err := s.defaultVersion(ctx)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	sum := sha256.Sum256(config)
	cv, err := s.cfg.Store.PutConfig(ctx, scope, floor, func(latest *store.ConfigVersion, next uint64) (*store.ConfigVersion, *store.AuditRecord, error) {
		cv := &store.ConfigVersion{Scope: scope, Version: next, Config: config, CreatedAt: now,
			CreatedBy: call.Principal.String(), Comment: comment, RolledBackFrom: from}
		rec := s.record(call, action, scope)
		if latest != nil {
			prevSum := sha256.Sum256(latest.Config)
			rec.Before = mustJSON(map[string]any{"version": latest.Version, "sha256": hex.EncodeToString(prevSum[:])})
		}
		after := map[string]any{"version": next, "sha256": hex.EncodeToString(sum[:]), "comment": comment}
		if from != 0 {
			after["rolled_back_from"] = from
		}
		rec.After = mustJSON(after)
		return cv, rec, nil
	})
	if err != nil {
		return nil, s.adminFailed(ctx, call, action, scope, err)
	}
	s.metrics.admin.WithLabelValues(action, "success").Inc()
	s.notifyConfig(scope)
	return configView(cv), nil
}

// ShowConfig returns a scope's version (0: latest) (PermRead).
func (s *Server) ShowConfig(ctx context.Context, scope api.ConfigScope, version uint64) (*api.ConfigVersion, error) {
	cv, err := s.cfg.Store.Config(ctx, scope.String(), version)
	if errors.Is(err, store.ErrNotFound) {
		if version != 0 {
			return nil, api.Errorf(api.CodeNotFound, "%s has no version %d", scope, version)
		}
		return nil, api.Errorf(api.CodeNotFound, "%s has no config; devices get the server's default: set one with `enrollctl config set`", scope)
	}
	if err != nil {
		return nil, err
	}
	return configView(cv), nil
}

// ConfigHistory lists a scope's versions below before (0: all), newest
// first, a page of at most limit; NextBefore continues it (PermRead).
func (s *Server) ConfigHistory(ctx context.Context, scope api.ConfigScope, limit int, before uint64) (*api.ConfigHistory, error) {
	limit = pageSize(limit)
	out := &api.ConfigHistory{Scope: scope.String(), Versions: []api.ConfigVersion{}}
	err := s.cfg.Store.ConfigHistory(ctx, scope.String(), func(cv *store.ConfigVersion) bool {
		if before != 0 && cv.Version >= before {
			return true
		}
		if len(out.Versions) == limit {
			out.NextBefore = out.Versions[limit-1].Version
			return false
		}
		v := configView(cv)
		sum := sha256.Sum256(cv.Config)
		v.Config, v.ConfigSHA256 = nil, hex.EncodeToString(sum[:])
		out.Versions = append(out.Versions, *v)
		return true
	})
	return out, err
}

func configView(cv *store.ConfigVersion) *api.ConfigVersion {
	return &api.ConfigVersion{Scope: cv.Scope, Version: cv.Version, Config: cv.Config, CreatedAt: cv.CreatedAt,
		CreatedBy: cv.CreatedBy, Comment: cv.Comment, RolledBackFrom: cv.RolledBackFrom}
}
