package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// Lead implements store.Leadership with etcd's election
// (concurrency.Election) on a lease of leadTTL seconds that the client
// keeps alive: the role is lost when this server stops reaching etcd for
// that long, or when ctx ends.
func (s *Store) Lead(ctx context.Context, role, id string) (context.Context, func(), error) {
	if role == "" || strings.Contains(role, "/") {
		return nil, nil, fmt.Errorf("lead: role %q: want a non-empty name without /", role)
	}
	if err := s.begin(ctx); err != nil {
		return nil, nil, err
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(leadTTL), concurrency.WithContext(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("lead %s: %w", role, err)
	}
	e := concurrency.NewElection(sess, s.k.elect(role))
	if err := e.Campaign(ctx, id); err != nil {
		sess.Close()
		return nil, nil, fmt.Errorf("lead %s: campaigning: %w", role, err)
	}
	held, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-sess.Done():
		case <-held.Done():
		}
		cancel()
	}()
	resign := func() {
		cancel()
		rctx, rcancel := s.reqCtx(context.Background())
		defer rcancel()
		if err := e.Resign(rctx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("lead: resigning", "role", role, "err", err)
		}
		sess.Close()
	}
	return held, resign, nil
}
