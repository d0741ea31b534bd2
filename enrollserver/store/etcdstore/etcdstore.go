package etcdstore

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Options tune the etcd store. nil means DefaultOptions(); a zero field
// means its default.
type Options struct {
	// TLS configures the connection of an etcds:// URL (nil: system
	// roots). An etcd:// URL with TLS set is refused: say etcds://.
	TLS *tls.Config
	// DialTimeout bounds connecting; RequestTimeout bounds each request.
	DialTimeout, RequestTimeout time.Duration
	// Username and Password authenticate to etcd (both or neither).
	Username, Password string
	// Logger receives the store's own rare events (journal recovery,
	// watch resumption). nil: discarded. The etcd client's logs are
	// always discarded.
	Logger *slog.Logger

	// SessionLeaseBucket and SessionLeaseGrace shape session leases (see
	// DefaultSessionLeaseBucket); tests shorten them.
	SessionLeaseBucket, SessionLeaseGrace time.Duration
	// BulkLockWait bounds the wait for the pre-registration/import lock.
	BulkLockWait time.Duration
}

// DefaultOptions returns the production defaults.
func DefaultOptions() *Options {
	return &Options{DialTimeout: DefaultDialTimeout, RequestTimeout: DefaultRequestTimeout,
		SessionLeaseBucket: DefaultSessionLeaseBucket, SessionLeaseGrace: DefaultSessionLeaseGrace, BulkLockWait: DefaultBulkLockWait}
}

// withDefaults returns a copy of o with zero fields defaulted.
func (o *Options) withDefaults() *Options {
	d := DefaultOptions()
	if o == nil {
		return d
	}
	c := *o
	if c.DialTimeout <= 0 {
		c.DialTimeout = d.DialTimeout
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = d.RequestTimeout
	}
	if c.SessionLeaseBucket <= 0 {
		c.SessionLeaseBucket = d.SessionLeaseBucket
	}
	if c.SessionLeaseGrace <= 0 {
		c.SessionLeaseGrace = d.SessionLeaseGrace
	}
	if c.BulkLockWait <= 0 {
		c.BulkLockWait = d.BulkLockWait
	}
	return &c
}

// Store is the etcd v3 implementation of store.Store. It is safe for
// concurrent use, and any number of Stores (in as many servers) may share
// one prefix of one cluster.
type Store struct {
	cli     *clientv3.Client
	ownsCli bool
	k       keys
	opts    *Options
	log     *slog.Logger
	closed  atomic.Bool

	// seq caches the audit counter as last seen, so a commit that appends
	// audit records usually needs no read of it (see txn.commit).
	seqMu sync.Mutex
	seq   counterHint

	// gc* is the group commit of audited writes (groupcommit.go).
	gcMu      sync.Mutex
	gcQueue   []*pendingCommit
	gcRunning bool

	leaseMu     sync.Mutex
	leases      map[int64]clientv3.LeaseID // expiry bucket → lease
	leaseGrants singleflight.Group         // grants in flight, by bucket

	// listPage is PageSize, smaller in tests of paging.
	listPage int
}

var (
	_ store.Store             = (*Store)(nil)
	_ store.ConfigWatcher     = (*Store)(nil)
	_ store.RevocationWatcher = (*Store)(nil)
	_ store.Leadership        = (*Store)(nil)
)

// Open connects to the cluster named by rawURL,
// etcd://host1:2379,host2:2379/prefix (etcds:// for TLS), and checks it
// answers. Close closes the connection.
func Open(ctx context.Context, rawURL string, opts *Options) (*Store, error) {
	u, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	o := opts.withDefaults()
	if (o.Username == "") != (o.Password == "") {
		return nil, fmt.Errorf("etcd store %s: username and password go together", rawURL)
	}
	tlsCfg := o.TLS
	switch {
	case u.tls && tlsCfg == nil:
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	case !u.tls && tlsCfg != nil:
		return nil, fmt.Errorf("etcd store URL %q: Options.TLS set for a plaintext etcd:// URL: %s: %w", rawURL, urlHint, ErrInvalidURL)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: u.endpoints, DialTimeout: o.DialTimeout, TLS: tlsCfg,
		Username: o.Username, Password: o.Password, Logger: zap.NewNop(),
		Context: context.WithoutCancel(ctx),
		// Detect a dead member on an idle connection and move on.
		DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second,
		RejectOldCluster: true,
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %v: %w", u.endpoints, err)
	}
	s, err := newStore(ctx, cli, true, u.prefix, o)
	if err != nil {
		cli.Close()
		return nil, err
	}
	return s, nil
}

// OpenClient returns a store over cli, keeping its keys under prefix
// (which must not be empty; "/" is appended if missing). Close leaves cli
// open: the caller owns it.
func OpenClient(ctx context.Context, cli *clientv3.Client, prefix string, opts *Options) (*Store, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, fmt.Errorf("etcd store: %v: %w", err, ErrInvalidURL)
	}
	if prefix[len(prefix)-1] != '/' {
		prefix += "/"
	}
	return newStore(ctx, cli, false, prefix, opts.withDefaults())
}

func newStore(ctx context.Context, cli *clientv3.Client, owns bool, prefix string, o *Options) (*Store, error) {
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	s := &Store{cli: cli, ownsCli: owns, k: keys{prefix}, opts: o, log: lg, leases: map[int64]clientv3.LeaseID{}, listPage: PageSize}
	if err := s.init(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// schemaVersion is the layout of the keys below (keys.go).
const schemaVersion = "1"

// init checks (or writes) the schema version, which also proves the
// cluster answers, and finishes a bulk write a crashed server left behind.
func (s *Store) init(ctx context.Context) error {
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	key := s.k.meta("schema")
	resp, err := s.cli.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, schemaVersion)).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return fmt.Errorf("initialising etcd store under %q: %w", s.k.p, err)
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 && string(kvs[0].Value) != schemaVersion {
			return fmt.Errorf("etcd store under %q: schema version %q, this build reads %q", s.k.p, kvs[0].Value, schemaVersion)
		}
	}
	return s.recoverIfNeeded(ctx)
}

// Close releases the store; it closes the client only if Open made it.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.ownsCli {
		return s.cli.Close()
	}
	return nil
}

// begin is the first step of every method: a closed store or an ended
// context refuses the call.
func (s *Store) begin(ctx context.Context) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return ctx.Err()
}

// reqCtx bounds one request.
func (s *Store) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.RequestTimeout)
}

// getJSON reads one key (linearizable) into a new T: ErrNotFound if
// absent.
func getJSON[T any](ctx context.Context, s *Store, key string) (*T, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", s.k.rel(key), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, store.ErrNotFound
	}
	return decode[T](resp.Kvs[0])
}

func decode[T any](kv *mvccpb.KeyValue) (*T, error) {
	v := new(T)
	if err := store.DecodeRecord(kv.Value, v); err != nil {
		return nil, fmt.Errorf("decoding %q: %w", kv.Key, err)
	}
	return v, nil
}

func encode(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// scan calls fn for each key in [start, end) in key order, a page of
// PageSize keys per request (each at the latest revision), checking ctx
// between pages, until fn returns false or an error. (Never newest first:
// etcd applies a limit only in ascending key order, see ConfigHistory.)
func (s *Store) scan(ctx context.Context, start, end string, fn func(kv *mvccpb.KeyValue) (bool, error)) error {
	return s.pages(ctx, start, end, false, nil, fn)
}

// pages reads [start, end) PageSize keys at a time, checking ctx between
// pages, and calls fn for each key until it returns false or an error.
// With rev nil each page is read at the latest revision; otherwise every
// page at *rev, which the first page sets when it is 0 (one snapshot).
func (s *Store) pages(ctx context.Context, start, end string, keysOnly bool, rev *int64, fn func(kv *mvccpb.KeyValue) (bool, error)) error {
	for {
		if err := s.begin(ctx); err != nil {
			return err
		}
		if start >= end {
			return nil
		}
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(PageSize)}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
		if rev != nil && *rev != 0 {
			opts = append(opts, clientv3.WithRev(*rev))
		}
		rctx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Get(rctx, start, opts...)
		cancel()
		if err != nil {
			return fmt.Errorf("reading %s: %w", s.k.rel(start), err)
		}
		if rev != nil && *rev == 0 {
			*rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			more, err := fn(kv)
			if err != nil || !more {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// scanJSON is scan decoding each value as T.
func scanJSON[T any](ctx context.Context, s *Store, start, end string, fn func(*T) bool) error {
	return s.scan(ctx, start, end, func(kv *mvccpb.KeyValue) (bool, error) {
		v, err := decode[T](kv)
		if err != nil {
			return false, err
		}
		return fn(v), nil
	})
}

// scanIndex walks index keys in [start, end); the part of each key after
// prefix names a record under data, read at the page's revision (so a
// page is one consistent snapshot) and passed to fn as T. An index key
// naming a missing record is corruption.
func scanIndex[T any](ctx context.Context, s *Store, prefix, start, end, data string, fn func(*T) bool) error {
	for {
		if err := s.begin(ctx); err != nil {
			return err
		}
		rctx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Get(rctx, start, clientv3.WithRange(end), clientv3.WithLimit(PageSize), clientv3.WithKeysOnly())
		cancel()
		if err != nil {
			return fmt.Errorf("listing %s: %w", s.k.rel(start), err)
		}
		names := make([]string, len(resp.Kvs))
		for i, kv := range resp.Kvs {
			names[i] = data + string(kv.Key[len(prefix):])
		}
		kvs, err := s.getMany(ctx, names, resp.Header.Revision)
		if err != nil {
			return err
		}
		for i, kv := range kvs {
			if kv == nil {
				return fmt.Errorf("index %s names %s, which is missing", s.k.rel(prefix), s.k.rel(names[i]))
			}
			v, err := decode[T](kv)
			if err != nil {
				return err
			}
			if !fn(v) {
				return nil
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// getMany reads keys (at revision rev, or the latest if 0) in read-only
// transactions of at most maxReadOps Gets; absent keys are nil.
func (s *Store) getMany(ctx context.Context, keys []string, rev int64) ([]*mvccpb.KeyValue, error) {
	out := make([]*mvccpb.KeyValue, 0, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), maxReadOps)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			if rev > 0 {
				ops[i] = clientv3.OpGet(k, clientv3.WithRev(rev))
			} else {
				ops[i] = clientv3.OpGet(k)
			}
		}
		rctx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Txn(rctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("reading %d keys: %w", n, err)
		}
		for _, r := range resp.Responses {
			var kv *mvccpb.KeyValue
			if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
				kv = kvs[0]
			}
			out = append(out, kv)
		}
		keys = keys[n:]
	}
	return out, nil
}

// counterHint is the audit counter as last seen.
type counterHint struct {
	value  uint64
	modRev int64 // 0: unknown (or the key is absent)
}

func parseCounter(kv *mvccpb.KeyValue) (uint64, error) {
	if kv == nil {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(kv.Value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("counter %q: %w", kv.Key, err)
	}
	return n, nil
}
