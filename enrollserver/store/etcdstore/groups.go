package etcdstore

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// UpdateGroup implements store.Store.
func (s *Store) UpdateGroup(ctx context.Context, name string, fn func(prev *store.Group) (*store.Group, *store.AuditRecord, error)) (*store.Group, error) {
	var out *store.Group
	err := s.update(ctx, func(t *txn) error {
		out = nil
		prev, err := txnGet[store.Group](t, s.k.group(name))
		if err != nil {
			return err
		}
		next, audit, err := fn(prev)
		if err != nil {
			return err
		}
		if next.Name != name {
			return fmt.Errorf("update of group %s wrote group %s", name, next.Name)
		}
		if err := t.putJSON(s.k.group(name), next); err != nil {
			return err
		}
		if audit != nil {
			t.appendAudit(audit)
		}
		out = next
		return nil
	})
	return out, err
}

// Group implements store.Store.
func (s *Store) Group(ctx context.Context, name string) (*store.Group, error) {
	return getJSON[store.Group](ctx, s, s.k.group(name))
}

// Groups implements store.Store.
func (s *Store) Groups(ctx context.Context, fn func(*store.Group) bool) error {
	return scanJSON(ctx, s, s.k.groups(), end(s.k.groups()), fn)
}

// latestConfig reads the newest version of scope in t, through the
// scope's configlatest key (guarded: a version added meanwhile re-runs t).
// A range read sorted newest first would make etcd load every version:
// it applies a limit only to ascending key order.
func latestConfig(t *txn, scope string) (*store.ConfigVersion, error) {
	kv, err := t.getOne(t.s.k.configLatest(scope))
	if err != nil || kv == nil {
		return nil, err
	}
	v, err := parseCounter(kv)
	if err != nil {
		return nil, err
	}
	return txnGet[store.ConfigVersion](t, t.s.k.config(scope, v))
}

// PutConfig implements store.Store. The version counter is one key for
// every scope, read and bumped in the transaction.
func (s *Store) PutConfig(ctx context.Context, scope string, floor uint64, fn func(latest *store.ConfigVersion, next uint64) (*store.ConfigVersion, *store.AuditRecord, error)) (*store.ConfigVersion, error) {
	var out *store.ConfigVersion
	err := s.update(ctx, func(t *txn) error {
		out = nil
		latest, err := latestConfig(t, scope)
		if err != nil {
			return err
		}
		kv, err := t.getOne(s.k.meta("config_seq"))
		if err != nil {
			return err
		}
		seq, err := parseCounter(kv)
		if err != nil {
			return err
		}
		next := max(seq, floor) + 1
		cv, audit, err := fn(latest, next)
		if err != nil {
			return err
		}
		if cv.Version != next || cv.Scope != scope {
			return fmt.Errorf("config of %s wrote %s version %d, want version %d", scope, cv.Scope, cv.Version, next)
		}
		if err := t.putJSON(s.k.config(scope, next), cv); err != nil {
			return err
		}
		t.put(s.k.meta("config_seq"), fmt.Sprint(next))
		t.put(s.k.configLatest(scope), fmt.Sprint(next))
		if audit != nil {
			t.appendAudit(audit)
		}
		out = cv
		return nil
	})
	return out, err
}

// Config implements store.Store.
func (s *Store) Config(ctx context.Context, scope string, version uint64) (*store.ConfigVersion, error) {
	if version == 0 {
		v, err := s.latestVersion(ctx, scope)
		if err != nil {
			return nil, err
		}
		if v == 0 {
			return nil, store.ErrNotFound
		}
		version = v
	}
	return getJSON[store.ConfigVersion](ctx, s, s.k.config(scope, version))
}

// ConfigHistory implements store.Store: newest first, a page at a time.
//
// etcd applies a range read's limit only in ascending key order: sorted
// newest first, every page would load all the scope's older versions. So
// each page is an ascending read of a window of version numbers below the
// last one delivered, chosen with count-only reads, which etcd answers
// from its in-memory index without loading values (configWindow). One
// page's reads share a revision.
func (s *Store) ConfigHistory(ctx context.Context, scope string, fn func(*store.ConfigVersion) bool) error {
	hi, err := s.latestVersion(ctx, scope)
	if err != nil || hi == 0 {
		return err
	}
	for hi > 0 {
		if err := s.begin(ctx); err != nil {
			return err
		}
		lo, rev, err := s.configWindow(ctx, scope, hi, s.listPage)
		if err != nil {
			return err
		}
		rctx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Get(rctx, s.k.config(scope, lo), clientv3.WithRange(s.k.config(scope, hi+1)), clientv3.WithRev(rev))
		cancel()
		if err != nil {
			return fmt.Errorf("listing the config history of %s: %w", scope, err)
		}
		for i := len(resp.Kvs) - 1; i >= 0; i-- {
			cv, err := decode[store.ConfigVersion](resp.Kvs[i])
			if err != nil {
				return err
			}
			if !fn(cv) {
				return nil
			}
		}
		hi = lo - 1
	}
	return nil
}

// latestVersion is the newest version of scope (configlatest), 0 if none.
func (s *Store) latestVersion(ctx context.Context, scope string) (uint64, error) {
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	rctx, cancel := s.reqCtx(ctx)
	resp, err := s.cli.Get(rctx, s.k.configLatest(scope))
	cancel()
	if err != nil {
		return 0, fmt.Errorf("reading the latest config of %s: %w", scope, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return parseCounter(resp.Kvs[0])
}

// configWindow picks the next page of scope's history below hi: the
// lowest version number lo such that versions lo..hi of the scope number
// from page to 2×page, or 1 if fewer remain. Version numbers are shared by
// every scope, so a scope's may be sparse: the window grows fourfold while
// it holds fewer than page, then a binary search narrows it. Every read is
// count-only, at the revision of the first, which it returns.
func (s *Store) configWindow(ctx context.Context, scope string, hi uint64, page int) (lo uint64, rev int64, err error) {
	count := func(lo uint64) (int, error) {
		opts := []clientv3.OpOption{clientv3.WithRange(s.k.config(scope, hi+1)), clientv3.WithCountOnly()}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		rctx, cancel := s.reqCtx(ctx)
		defer cancel()
		resp, err := s.cli.Get(rctx, s.k.config(scope, lo), opts...)
		if err != nil {
			return 0, fmt.Errorf("counting the config history of %s: %w", scope, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		return int(resp.Count), nil
	}
	below := func(w uint64) uint64 { // hi-w+1, at least 1
		if w >= hi {
			return 1
		}
		return hi - w + 1
	}
	page = max(page, 1)
	w := uint64(page)
	lo = below(w)
	n, err := count(lo)
	if err != nil {
		return 0, 0, err
	}
	sparse := hi + 1 // the last window that held fewer than page
	for n < page && lo > 1 {
		sparse = lo
		if w > hi/4 {
			w = hi // all that remains (w*4 could wrap around)
		} else {
			w *= 4
		}
		lo = below(w)
		if n, err = count(lo); err != nil {
			return 0, 0, err
		}
	}
	// count(lo) > 2×page and count(sparse) < page: counts change by at
	// most one per version number, so one in between holds page..2×page.
	for n > 2*page {
		mid := lo + (sparse-lo)/2
		c, err := count(mid)
		if err != nil {
			return 0, 0, err
		}
		switch {
		case c > 2*page:
			lo, n = mid, c
		case c < page:
			sparse = mid
		default:
			return mid, rev, nil
		}
	}
	return lo, rev, nil
}

// WatchConfigs implements store.ConfigWatcher: it reports config versions
// stored by any client, in commit order, from the revision current when it
// was called (see watchPuts).
func (s *Store) WatchConfigs(ctx context.Context, fn func(*store.ConfigVersion)) error {
	return watchPuts(ctx, s, "config", s.k.configs(), fn)
}

// WatchRevocations implements store.RevocationWatcher: it reports
// certificate revocations recorded by any client, in commit order, from the
// revision current when it was called (see watchPuts).
func (s *Store) WatchRevocations(ctx context.Context, fn func(*store.Revocation)) error {
	return watchPuts(ctx, s, "revocation", s.k.revocations(), fn)
}

// watchPuts calls fn for every value put under prefix after the call
// began, in commit order, until ctx ends. After an error it resumes from
// the revision after the last event delivered. If etcd compacted past that
// point it resumes from the compaction revision and logs a warning: the
// values put in between are not reported (etcd keeps no history before
// its compaction revision).
func watchPuts[T any](ctx context.Context, s *Store, what, prefix string, fn func(*T)) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	rctx, cancel := s.reqCtx(ctx)
	resp, err := s.cli.Get(rctx, s.k.meta("schema"))
	cancel()
	if err != nil {
		return fmt.Errorf("starting %s watch: %w", what, err)
	}
	next := resp.Header.Revision + 1
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithFilterDelete())
		var werr error
		for wr := range wch {
			if wr.CompactRevision != 0 {
				s.log.Warn(what+" watch: history compacted; changes between the revisions were not reported",
					"from_revision", next, "compact_revision", wr.CompactRevision)
				next = wr.CompactRevision
				werr = fmt.Errorf("compacted")
				break
			}
			if werr = wr.Err(); werr != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type != mvccpb.PUT {
					continue
				}
				v, err := decode[T](ev.Kv)
				if err != nil {
					s.log.Error(what+" watch: undecodable value", "key", s.k.rel(string(ev.Kv.Key)), "err", err)
				} else {
					fn(v)
				}
				next = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.closed.Load() {
			return store.ErrClosed
		}
		if err := s.cli.Ctx().Err(); err != nil {
			return fmt.Errorf("%s watch: etcd client closed: %w", what, err)
		}
		if werr != nil {
			s.log.Info(what+" watch: resuming", "revision", next, "err", werr.Error())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(watchRetryDelay):
		}
	}
}

// UpdateFirmware implements store.Store. The group's references are a
// guarded range read (references are never deleted, so the guard sees
// every change). A plan writing more than fits one transaction (about
// MaxTxnOps references) is refused with ErrTooManyOps.
func (s *Store) UpdateFirmware(ctx context.Context, group string, plan func(current []*store.FirmwareReference) (*store.FirmwarePlan, error)) error {
	if group == "" {
		return fmt.Errorf("UpdateFirmware needs a group")
	}
	return s.update(ctx, func(t *txn) error {
		p := s.k.firmwareGroup(group)
		var current []*store.FirmwareReference
		if err := t.scan(p, end(p), false, func(kv *mvccpb.KeyValue) (bool, error) {
			r, err := decode[store.FirmwareReference](kv)
			current = append(current, r)
			return err == nil, err
		}); err != nil {
			return err
		}
		fp, err := plan(current)
		if err != nil || fp == nil {
			return err
		}
		for _, r := range fp.Put {
			if r.Group != group || r.Digest == "" {
				return fmt.Errorf("firmware update of group %s wrote reference %q of group %q", group, r.Digest, r.Group)
			}
			if err := t.putJSON(s.k.firmware(group, r.Digest), r); err != nil {
				return err
			}
		}
		t.appendAudit(fp.Audit...)
		return nil
	})
}

// FirmwareReference implements store.Store.
func (s *Store) FirmwareReference(ctx context.Context, group, digest string) (*store.FirmwareReference, error) {
	return getJSON[store.FirmwareReference](ctx, s, s.k.firmware(group, digest))
}

// FirmwareReferences implements store.Store.
func (s *Store) FirmwareReferences(ctx context.Context, group string, after store.FirmwareKey, fn func(*store.FirmwareReference) bool) error {
	prefix := s.k.firmwareAll()
	if group != "" {
		prefix = s.k.firmwareGroup(group)
	}
	start := prefix
	if after != (store.FirmwareKey{}) {
		// The first key after: append a NUL, the smallest byte.
		if k := s.k.firmware(after.Group, after.Digest) + "\x00"; k > start {
			start = k
		}
	}
	return scanJSON(ctx, s, start, end(prefix), fn)
}
