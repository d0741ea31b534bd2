package store

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Bucket names. The schema version lives in meta.
var (
	bucketMeta     = []byte("meta")
	bucketSessions = []byte("sessions")
	bucketDevices  = []byte("devices")
	bucketCerts    = []byte("certificates")
	bucketPrereg   = []byte("preregistrations")
	// bucketCompleted maps a consumed session ID to its device until the
	// session's TTL passes, so a repeated finish finds its result. With
	// Options.MemorySessions the marker stays in memory instead
	// (memSessions.done); only sessions kept in the bucket get one here.
	bucketCompleted = []byte("completed_sessions")

	// Fleet operations (schema 2).
	bucketAudit       = []byte("audit")
	bucketStatusIndex = []byte("device_status") // status/id → ""
	bucketDeviceCerts = []byte("device_certs")  // id/serial → ""
	bucketSerials     = []byte("serials")       // serial → device id
	bucketRevocations = []byte("revocations")   // cert serial → Revocation
	bucketGroups      = []byte("groups")
	bucketConfigs     = []byte("configs") // scope \x00 version(8 BE) → ConfigVersion
	bucketImports     = []byte("imports") // id → {batch, rows: line(8 BE) → StagedRow}

	// Measured boot (added within schema 2: a new bucket, created on
	// open; older builds ignore it).
	bucketFirmware = []byte("firmware_references") // group \x00 digest → FirmwareReference
	// Operator credentials (added within schema 2 in the same way; an
	// older build ignores the bucket, so it accepts the credentials
	// revoked there).
	bucketOperatorRevocations = []byte("operator_revocations") // serial → OperatorRevocation

	keySchema     = []byte("schema")
	keyCRLNumber  = []byte("crl_number")
	keyConfigSeq  = []byte("config_seq")
	schemaVersion = []byte("2")
	schemaV1      = []byte("1")
)

// allBuckets are created on open.
var allBuckets = [][]byte{bucketMeta, bucketSessions, bucketDevices, bucketCerts, bucketPrereg, bucketCompleted,
	bucketAudit, bucketStatusIndex, bucketDeviceCerts, bucketSerials, bucketRevocations, bucketGroups, bucketConfigs, bucketImports,
	bucketFirmware, bucketOperatorRevocations}

// Options tune the bbolt store. nil means DefaultOptions().
type Options struct {
	// LockTimeout bounds the wait for the file lock held by another
	// process (a second enrolld on the same data dir).
	LockTimeout time.Duration
	// MaxBatchDelay is how long bbolt waits to group concurrent writes
	// into one fsynced commit; a lone writer commits at once. (Making every
	// finished enrollment wait 2 ms for company was tried: the sequential
	// BenchmarkEnrollment spent ~0.3 ms more CPU per enrollment, the Go
	// runtime idling and waking around each wait, and enroll-bench showed
	// no saving beyond its noise.)
	MaxBatchDelay time.Duration
	// NoSync skips fsync. Only for benchmarks that measure everything
	// but the disk; never in production.
	NoSync bool
	// MemorySessions keeps live (begun, unfinished) sessions in memory
	// instead of the sessions bucket, so begin writes nothing to disk:
	// one fsynced commit per enrollment instead of two. The durable
	// record is written at completion, in FinishEnrollment's transaction
	// (the device, its certificate, the audit record), so a crash loses
	// no finished enrollment. A finished session leaves a tombstone in
	// memory (its device, until its TTL passes) instead of an entry in
	// the completed_sessions bucket, which cost that transaction two
	// more page writes and the purge two more: CompletedSession answers
	// from it, so a repeated finish finds its result, and its ID cannot
	// be begun again while it lives. What a crash (or restart) loses is
	// the sessions begun and not yet finished, whose devices are told
	// nonce_unknown_or_used at finish and begin again, as after their
	// session's TTL, and the tombstones: a finish whose answer was lost
	// in a crash after its commit is likewise told to begin again, which
	// converges; nothing acknowledged to a device is lost. Memory grows
	// with the sessions live at once (about 1 KiB each, at most the begin
	// rate times the session TTL) and the tombstones (about 200 bytes
	// each, at most the finish rate times the session TTL); purged
	// sessions and tombstones are dropped. Sessions and completed entries
	// an earlier run left in the buckets are still found. One process
	// only: never for a store several servers share.
	MemorySessions bool
	// MaxMemorySessions bounds the sessions MemorySessions holds at once
	// (0: DefaultMaxMemorySessions); past it CreateSession returns
	// ErrTooManySessions and the device is told to retry later. It bounds
	// the tombstones of finished sessions separately (they do not count
	// toward the live sessions): past it the tombstone expiring first is
	// dropped, which only means a repeated finish of that session is told
	// to begin again.
	MaxMemorySessions int
}

// DefaultMaxMemorySessions is 200,000 live sessions (~200 MiB at worst),
// and as many tombstones (~40 MiB): a begin rate of over 1,600/s sustained
// for the default 2-minute session TTL, well above what admission lets
// through on a small server.
const DefaultMaxMemorySessions = 200000

// DefaultOptions returns the production defaults.
func DefaultOptions() *Options {
	return &Options{LockTimeout: 5 * time.Second, MaxBatchDelay: time.Millisecond}
}

// Bolt is the embedded bbolt implementation of Store.
type Bolt struct {
	db *bolt.DB
	// writers counts write transactions in flight, to choose between a
	// direct commit and a group commit.
	writers atomic.Int32
	// mem holds the live sessions with Options.MemorySessions; nil
	// keeps them in the sessions bucket.
	mem *memSessions
}

// write runs fn in a write transaction. A lone writer commits at once; when
// others are writing too, bbolt's Batch groups them into one fsync. (Batch
// alone would make a lone writer wait MaxBatchDelay for company that never
// comes.) fn may run more than once, so it must only touch tx.
func (s *Bolt) write(fn func(*bolt.Tx) error) error {
	n := s.writers.Add(1)
	defer s.writers.Add(-1)
	if n == 1 {
		return s.db.Update(fn)
	}
	return s.db.Batch(fn)
}

var _ Store = (*Bolt)(nil)

// Open opens or creates the store file at path with mode 0600.
func Open(path string, opts *Options) (*Bolt, error) {
	if opts == nil {
		opts = DefaultOptions()
	}
	// The free-page list is kept in memory and rebuilt by a scan at open
	// (NoFreelistSync, in a hash map), as etcd keeps its bbolt: persisted,
	// it is rewritten by every commit and grows with the file's
	// fragmentation (3 of 25 pages a lone enrollment writes with 20,000
	// devices, see BenchmarkBoltFinishEnrollment; CPU per commit did not
	// move measurably), while the scan costs ~70 ms at open for that
	// store. Files are compatible both ways (TestBoltFreelistBothWays).
	// The scan checks every page: a corrupt one stops the process at
	// open with bbolt's assertion naming the page (it panics in a
	// goroutine of its own, so it cannot be returned as an error), where
	// before it did when the page was first read.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout, NoSync: opts.NoSync,
		NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("opening store %s: locked by another process (is another enrolld running on this data dir?): %w", path, err)
		}
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	db.MaxBatchDelay = opts.MaxBatchDelay
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			return meta.Put(keySchema, schemaVersion)
		case bytes.Equal(v, schemaV1):
			// Schema 1 had no indexes: build them from the records.
			if err := migrateV1(tx); err != nil {
				return fmt.Errorf("migrating schema 1 to 2: %w", err)
			}
			return meta.Put(keySchema, schemaVersion)
		case !bytes.Equal(v, schemaVersion):
			return fmt.Errorf("schema version %q, this build reads %q", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialising store %s: %w", path, err)
	}
	st := &Bolt{db: db}
	if opts.MemorySessions {
		st.mem = &memSessions{m: make(map[string]*memSession), done: make(map[string]string), max: opts.MaxMemorySessions}
		if st.mem.max <= 0 {
			st.mem.max = DefaultMaxMemorySessions
		}
	}
	return st, nil
}

// Close closes the file.
func (s *Bolt) Close() error { return s.db.Close() }

// CreateSession implements Store.
func (s *Bolt) CreateSession(ctx context.Context, sess *Session) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.mem != nil {
		return s.createMemSession(sess)
	}
	v, err := json.Marshal(sess)
	if err != nil {
		return fmt.Errorf("encoding session: %w", err)
	}
	return s.write(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSessions)
		if b.Get([]byte(sess.ID)) != nil {
			return fmt.Errorf("session %s: %w", sess.ID, ErrExists)
		}
		return b.Put([]byte(sess.ID), v)
	})
}

// Session implements Store.
func (s *Bolt) Session(ctx context.Context, id string, now time.Time) (*Session, error) {
	if s.mem != nil {
		if e := s.mem.get(id); e != nil {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if !now.Before(e.sess.ExpiresAt) {
				return nil, ErrSessionExpired
			}
			return cloneSession(&e.sess), nil
		}
	}
	var sess Session
	if err := s.get(ctx, bucketSessions, id, &sess); err != nil {
		return nil, err
	}
	if !now.Before(sess.ExpiresAt) {
		return nil, ErrSessionExpired
	}
	return &sess, nil
}

// FinishEnrollment implements Store.
func (s *Bolt) FinishEnrollment(ctx context.Context, id string, now time.Time, cert *IssuedCertificate, apply func(prev *Device) (*Device, *AuditRecord, error)) (*Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	certVal, err := json.Marshal(cert)
	if err != nil {
		return nil, fmt.Errorf("encoding certificate record: %w", err)
	}
	if s.mem != nil {
		if e := s.mem.get(id); e != nil {
			return s.finishMemSession(e, now, cert, certVal, apply)
		}
		if _, done := s.mem.completed(id); done {
			return nil, ErrSessionUsed
		}
	}
	var out *Device
	// Batch may run the closure more than once: it only reads the
	// transaction and the pure apply function.
	err = s.write(func(tx *bolt.Tx) error {
		out = nil
		sessions := tx.Bucket(bucketSessions)
		raw := sessions.Get([]byte(id))
		if raw == nil {
			return ErrSessionUsed
		}
		var sess Session
		if err := DecodeRecord(raw, &sess); err != nil {
			return fmt.Errorf("decoding session %s: %w", id, err)
		}
		if !now.Before(sess.ExpiresAt) {
			return ErrSessionExpired
		}
		if err := sessions.Delete([]byte(id)); err != nil {
			return err
		}
		next, err := recordEnrollment(tx, &sess, cert, certVal, apply, true)
		if err != nil {
			return err
		}
		out = next
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// recordEnrollment writes the outcome of session sess (already checked
// live and deleted from the sessions bucket if it was there): the device
// record apply returns, the certificate, the audit record and, if
// markCompleted, the completed session (a session held in memory gets a
// tombstone in memory instead: memSessions.complete).
func recordEnrollment(tx *bolt.Tx, sess *Session, cert *IssuedCertificate, certVal []byte, apply func(prev *Device) (*Device, *AuditRecord, error), markCompleted bool) (*Device, error) {
	id := sess.ID
	devices := tx.Bucket(bucketDevices)
	var prev *Device
	if raw := devices.Get([]byte(sess.DeviceID)); raw != nil {
		prev = new(Device)
		if err := DecodeRecord(raw, prev); err != nil {
			return nil, fmt.Errorf("decoding device %s: %w", sess.DeviceID, err)
		}
	}
	next, audit, err := apply(prev)
	if err != nil {
		return nil, err
	}
	if next.ID != sess.DeviceID {
		return nil, fmt.Errorf("finish of session %s wrote device %s, want %s", id, next.ID, sess.DeviceID)
	}
	if markCompleted {
		done, err := json.Marshal(completed{DeviceID: sess.DeviceID, ExpiresAt: sess.ExpiresAt})
		if err != nil {
			return nil, err
		}
		if err := tx.Bucket(bucketCompleted).Put([]byte(id), done); err != nil {
			return nil, err
		}
	}
	if err := putDevice(tx, prev, next); err != nil {
		return nil, err
	}
	certs := tx.Bucket(bucketCerts)
	if certs.Get([]byte(cert.Serial)) != nil {
		return nil, fmt.Errorf("certificate serial %s: %w", cert.Serial, ErrExists)
	}
	if err := certs.Put([]byte(cert.Serial), certVal); err != nil {
		return nil, err
	}
	if err := tx.Bucket(bucketDeviceCerts).Put(deviceCertKey(cert.DeviceID, cert.Serial), nil); err != nil {
		return nil, err
	}
	if audit != nil {
		if err := appendAudit(tx, audit); err != nil {
			return nil, err
		}
	}
	return next, nil
}

// completed is the record of a consumed session.
type completed struct {
	DeviceID  string    `json:"device_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// CompletedSession implements Store: from the tombstones of sessions
// finished in memory, else from the bucket.
func (s *Bolt) CompletedSession(ctx context.Context, id string) (string, error) {
	if s.mem != nil {
		if dev, ok := s.mem.completed(id); ok {
			if err := ctx.Err(); err != nil {
				return "", err
			}
			return dev, nil
		}
	}
	var c completed
	if err := s.get(ctx, bucketCompleted, id, &c); err != nil {
		return "", err
	}
	return c.DeviceID, nil
}

// PurgeExpiredSessions implements Store.
func (s *Bolt) PurgeExpiredSessions(ctx context.Context, now time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	purged := 0
	if s.mem != nil {
		purged = s.mem.purge(now)
	}
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = 0
		for _, bucket := range [][]byte{bucketSessions, bucketCompleted} {
			c := tx.Bucket(bucket).Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				var rec struct {
					ExpiresAt time.Time `json:"expires_at"`
				}
				if err := DecodeRecord(v, &rec); err != nil || !now.Before(rec.ExpiresAt) {
					if err := c.Delete(); err != nil {
						return err
					}
					if bytes.Equal(bucket, bucketSessions) {
						n++
					}
				}
			}
		}
		return nil
	})
	return purged + n, err
}

// Device implements Store.
func (s *Bolt) Device(ctx context.Context, id string) (*Device, error) {
	var d Device
	if err := s.get(ctx, bucketDevices, id, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// Devices implements Store.
func (s *Bolt) Devices(ctx context.Context, fn func(*Device) bool) error {
	return forEach(ctx, s.db, bucketDevices, fn)
}

// Certificate implements Store.
func (s *Bolt) Certificate(ctx context.Context, serial string) (*IssuedCertificate, error) {
	var c IssuedCertificate
	if err := s.get(ctx, bucketCerts, serial, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// PutPreregistrations implements Store.
func (s *Bolt) PutPreregistrations(ctx context.Context, regs []*Preregistration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	vals := make([][]byte, len(regs))
	for i, r := range regs {
		v, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encoding pre-registration %s: %w", r.DeviceID, err)
		}
		vals[i] = v
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPrereg)
		for i, r := range regs {
			var prev *Preregistration
			if old := b.Get([]byte(r.DeviceID)); old != nil {
				prev = new(Preregistration)
				if err := DecodeRecord(old, prev); err == nil && samePrereg(prev, r) {
					continue // re-import of the same row: no-op
				}
			}
			if err := putPrereg(tx, prev, r, vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// SamePreregistration reports whether a and b register the same serial,
// group and labels (the time of registration aside).
func SamePreregistration(a, b *Preregistration) bool { return samePrereg(a, b) }

func samePrereg(a, b *Preregistration) bool {
	if a.Serial != b.Serial || a.Group != b.Group || len(a.Labels) != len(b.Labels) {
		return false
	}
	for k, v := range a.Labels {
		if b.Labels[k] != v {
			return false
		}
	}
	return true
}

// Preregistration implements Store.
func (s *Bolt) Preregistration(ctx context.Context, deviceID string) (*Preregistration, error) {
	var p Preregistration
	if err := s.get(ctx, bucketPrereg, deviceID, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// Preregistrations implements Store.
func (s *Bolt) Preregistrations(ctx context.Context, fn func(*Preregistration) bool) error {
	return forEach(ctx, s.db, bucketPrereg, fn)
}

func (s *Bolt) get(ctx context.Context, bucket []byte, key string, v any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucket).Get([]byte(key))
		if raw == nil {
			return ErrNotFound
		}
		if err := DecodeRecord(raw, v); err != nil {
			return fmt.Errorf("decoding %s/%s: %w", bucket, key, err)
		}
		return nil
	})
}

// forEach decodes each value of bucket as T and calls fn until it returns
// false. It checks ctx between records so a long listing can be cancelled.
func forEach[T any](ctx context.Context, db *bolt.DB, bucket []byte, fn func(*T) bool) error {
	return db.View(func(tx *bolt.Tx) error { return scanAfter(ctx, tx.Bucket(bucket), "", fn) })
}

// scanAfter decodes each value of b whose key sorts after `after` ("" for
// all) as T and calls fn until it returns false, checking ctx between
// records so a long listing can be cancelled.
func scanAfter[T any](ctx context.Context, b *bolt.Bucket, after string, fn func(*T) bool) error {
	c := b.Cursor()
	k, v := c.First()
	if after != "" {
		k, v = c.Seek(append([]byte(after), 0))
	}
	for ; k != nil; k, v = c.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}
		rec := new(T)
		if err := DecodeRecord(v, rec); err != nil {
			return fmt.Errorf("decoding %s: %w", k, err)
		}
		if !fn(rec) {
			return nil
		}
	}
	return nil
}

// memSessions are the live sessions of a store opened with
// Options.MemorySessions, and the tombstones of those finished.
type memSessions struct {
	mu sync.Mutex
	m  map[string]*memSession
	// done maps the ID of a session finished in memory to its device
	// until the session's TTL passes (what bucketCompleted records for a
	// session kept in the bucket); expiry holds the same IDs, the first
	// to expire on top. No ID is in both m and done.
	done   map[string]string
	expiry tombstones
	// max bounds m and, separately, done.
	max int
}

// tombstone is an entry of memSessions.expiry.
type tombstone struct {
	id        string
	expiresAt time.Time
}

// tombstones is a container/heap of tombstones, the first to expire on
// top.
type tombstones []tombstone

func (h tombstones) Len() int           { return len(h) }
func (h tombstones) Less(i, j int) bool { return h[i].expiresAt.Before(h[j].expiresAt) }
func (h tombstones) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *tombstones) Push(x any)        { *h = append(*h, x.(tombstone)) }
func (h *tombstones) Pop() any {
	old := *h
	x := old[len(old)-1]
	old[len(old)-1] = tombstone{}
	*h = old[:len(old)-1]
	return x
}

// memSession is one live session. sess is never modified after
// CreateSession; finishing serialises FinishEnrollment calls for it.
type memSession struct {
	sess      Session
	finishing sync.Mutex
}

func (ms *memSessions) get(id string) *memSession {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.m[id]
}

// live reports whether e is still the session under its ID (not consumed
// or purged).
func (ms *memSessions) live(e *memSession) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	return ms.m[e.sess.ID] == e
}

// complete replaces live session e by its tombstone, in one step: a
// concurrent finish finds e consumed, and CompletedSession finds the
// tombstone, as soon as the finish returns. Past max tombstones the one
// expiring first is dropped.
func (ms *memSessions) complete(e *memSession) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	id := e.sess.ID
	if ms.m[id] != e {
		return // purged while its finish committed: expired anyway
	}
	delete(ms.m, id)
	if len(ms.done) >= ms.max {
		delete(ms.done, heap.Pop(&ms.expiry).(tombstone).id)
	}
	ms.done[id] = e.sess.DeviceID
	heap.Push(&ms.expiry, tombstone{id: id, expiresAt: e.sess.ExpiresAt})
}

// completed returns the device of the session finished in memory under
// id, if its tombstone lives.
func (ms *memSessions) completed(id string) (string, bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	dev, ok := ms.done[id]
	return dev, ok
}

// purge drops the sessions and the tombstones whose TTL passed at now and
// returns how many sessions it dropped.
func (ms *memSessions) purge(now time.Time) int {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	n := 0
	for id, e := range ms.m {
		if !now.Before(e.sess.ExpiresAt) {
			delete(ms.m, id)
			n++
		}
	}
	for len(ms.expiry) > 0 && !now.Before(ms.expiry[0].expiresAt) {
		delete(ms.done, heap.Pop(&ms.expiry).(tombstone).id)
	}
	return n
}

// createMemSession is CreateSession with Options.MemorySessions.
func (s *Bolt) createMemSession(sess *Session) error {
	// An earlier run without MemorySessions may have left live sessions
	// in the bucket; their IDs stay taken. (Nothing writes the bucket
	// now, so this read cannot race with a write.)
	err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketSessions).Get([]byte(sess.ID)) != nil {
			return fmt.Errorf("session %s: %w", sess.ID, ErrExists)
		}
		return nil
	})
	if err != nil {
		return err
	}
	e := &memSession{sess: *cloneSession(sess)}
	s.mem.mu.Lock()
	defer s.mem.mu.Unlock()
	if s.mem.m[sess.ID] != nil {
		return fmt.Errorf("session %s: %w", sess.ID, ErrExists)
	}
	if _, ok := s.mem.done[sess.ID]; ok {
		return fmt.Errorf("session %s already finished: %w", sess.ID, ErrExists)
	}
	if len(s.mem.m) >= s.mem.max {
		return fmt.Errorf("%d sessions live: %w", len(s.mem.m), ErrTooManySessions)
	}
	s.mem.m[sess.ID] = e
	return nil
}

// finishMemSession is FinishEnrollment of a session held in memory: the
// same transaction as for a session in the bucket, minus the sessions and
// completed_sessions buckets; once the transaction committed, the session
// becomes a tombstone in memory.
func (s *Bolt) finishMemSession(e *memSession, now time.Time, cert *IssuedCertificate, certVal []byte, apply func(prev *Device) (*Device, *AuditRecord, error)) (*Device, error) {
	// A concurrent finish of the same session waits here, then finds it
	// consumed (or still live, if this one failed and wrote nothing).
	e.finishing.Lock()
	defer e.finishing.Unlock()
	if !s.mem.live(e) {
		return nil, ErrSessionUsed
	}
	if !now.Before(e.sess.ExpiresAt) {
		return nil, ErrSessionExpired
	}
	var out *Device
	// Batch may run the closure more than once: it only reads the
	// transaction, the unchanging session and the pure apply function.
	err := s.write(func(tx *bolt.Tx) error {
		out = nil
		next, err := recordEnrollment(tx, &e.sess, cert, certVal, apply, false)
		if err != nil {
			return err
		}
		out = next
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.mem.complete(e)
	return out, nil
}

// cloneSession deep-copies sess, dropping the monotonic clock readings as
// a round trip through the bucket's JSON would, so that a caller never
// shares memory with the stored session.
func cloneSession(sess *Session) *Session {
	c := *sess
	c.EKPublic = bytes.Clone(sess.EKPublic)
	c.AKPublic = bytes.Clone(sess.AKPublic)
	c.Nonce = bytes.Clone(sess.Nonce)
	c.ProofHash = bytes.Clone(sess.ProofHash)
	c.PCRs = slices.Clone(sess.PCRs)
	c.Labels = maps.Clone(sess.Labels)
	c.RequiredPCRs = slices.Clone(sess.RequiredPCRs)
	c.CreatedAt = sess.CreatedAt.Round(0)
	c.ExpiresAt = sess.ExpiresAt.Round(0)
	return &c
}
