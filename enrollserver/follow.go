package enrollserver

import (
	"context"
	"log/slog"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// When several servers share a store (etcd), each hears of the others'
// changes through the store's watches: config versions, to push bundles to
// the devices connected to it, and revocations, to re-sign the CRL it
// publishes. With a store only one server uses, local changes are acted on
// as they are stored, and these return nil at once.

// Backoff of a watch that ended with an error.
const (
	followMinBackoff = 100 * time.Millisecond
	followMaxBackoff = 30 * time.Second
)

// FollowConfigChanges relays the config versions any server stores to this
// server's config watchers (OnConfigChange) until ctx ends, when the store
// is a store.ConfigWatcher: a device connected to this server's broker
// hears of an operator's change made through another server. It returns
// ctx.Err() at the end.
func (s *Server) FollowConfigChanges(ctx context.Context) error {
	w, ok := s.cfg.Store.(store.ConfigWatcher)
	if !ok {
		return nil
	}
	s.followingConfigs.Store(true)
	defer s.followingConfigs.Store(false)
	return s.follow(ctx, "config", func(ctx context.Context, reset func()) error {
		return w.WatchConfigs(ctx, func(cv *store.ConfigVersion) {
			reset()
			s.relayConfig(cv.Scope)
		})
	})
}

// FollowRevocations re-signs this server's CRL (Config.OnCRL, GET /v1/crl)
// whenever any server records a revocation, until ctx ends, when the store
// is a store.RevocationWatcher. A burst of revocations is one re-signing. It
// returns ctx.Err() at the end.
func (s *Server) FollowRevocations(ctx context.Context) error {
	w, ok := s.cfg.Store.(store.RevocationWatcher)
	if !ok {
		return nil
	}
	kick := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
				if _, err := s.RefreshCRL(ctx); err != nil && ctx.Err() == nil {
					s.log.LogAttrs(ctx, slog.LevelError, "re-signing the crl after a revocation", slog.String("err", err.Error()))
				}
			}
		}
	}()
	return s.follow(ctx, "revocation", func(ctx context.Context, reset func()) error {
		return w.WatchRevocations(ctx, func(*store.Revocation) {
			reset()
			select {
			case kick <- struct{}{}:
			default: // a re-signing is due already
			}
		})
	})
}

// follow runs watch until ctx ends, restarting it with capped exponential
// backoff when it fails; watch calls reset when an event arrives.
func (s *Server) follow(ctx context.Context, what string, watch func(ctx context.Context, reset func()) error) error {
	backoff := followMinBackoff
	for {
		err := watch(ctx, func() { backoff = followMinBackoff })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.LogAttrs(ctx, slog.LevelWarn, what+" watch ended; restarting", slog.Any("err", err), slog.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, followMaxBackoff)
	}
}
