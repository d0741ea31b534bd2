package store_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/enrollserver/store/storetest"
)

func memOptions() *store.Options {
	o := store.DefaultOptions()
	o.MemorySessions = true
	return o
}

// TestBoltMemorySessions runs the conformance suite with live sessions in
// memory.
func TestBoltMemorySessions(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(filepath.Join(t.TempDir(), "enroll.db"), memOptions())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestBoltMemorySessionsAcrossRestart: a session begun before a restart is
// gone after it (the device begins again), a finished one is durable but
// its tombstone is gone (a repeated finish is told to begin again), and a
// session an earlier run without MemorySessions stored is still consumed
// once, its completed entry in the bucket.
func TestBoltMemorySessionsAcrossRestart(t *testing.T) {
	ctx := t.Context()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sess := func(id string) *store.Session {
		return &store.Session{ID: id, DeviceID: "dev-" + id, ProofHash: []byte("p"), CreatedAt: t0, ExpiresAt: t0.Add(time.Minute)}
	}
	apply := func(id string) func(*store.Device) (*store.Device, *store.AuditRecord, error) {
		return func(*store.Device) (*store.Device, *store.AuditRecord, error) {
			return &store.Device{ID: "dev-" + id, Status: store.StatusEnrolled, LastSessionID: id}, nil, nil
		}
	}
	cert := func(serial, id string) *store.IssuedCertificate {
		return &store.IssuedCertificate{Serial: serial, DeviceID: "dev-" + id, SessionID: id, NotBefore: t0, NotAfter: t0.Add(time.Hour)}
	}
	path := filepath.Join(t.TempDir(), "enroll.db")

	// An earlier run kept sessions in the bucket.
	s, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, sess("durable")); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = store.Open(path, memOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, sess("durable")); !errors.Is(err, store.ErrExists) {
		t.Errorf("reusing the ID of a stored session: %v, want ErrExists", err)
	}
	if _, err := s.Session(ctx, "durable", t0); err != nil {
		t.Errorf("stored session: %v", err)
	}
	if _, err := s.FinishEnrollment(ctx, "durable", t0, cert("c0", "durable"), apply("durable")); err != nil {
		t.Errorf("finishing the stored session: %v", err)
	}
	if _, err := s.FinishEnrollment(ctx, "durable", t0, cert("c00", "durable"), apply("durable")); !errors.Is(err, store.ErrSessionUsed) {
		t.Errorf("finishing the stored session twice: %v, want ErrSessionUsed", err)
	}
	for _, id := range []string{"done", "open"} {
		if err := s.CreateSession(ctx, sess(id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.FinishEnrollment(ctx, "done", t0, cert("c1", "done"), apply("done")); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = store.Open(path, memOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Session(ctx, "open", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unfinished session after restart: %v, want ErrNotFound", err)
	}
	if _, err := s.FinishEnrollment(ctx, "open", t0, cert("c2", "open"), apply("open")); !errors.Is(err, store.ErrSessionUsed) {
		t.Errorf("finishing an unfinished session after restart: %v, want ErrSessionUsed", err)
	}
	if dev, err := s.CompletedSession(ctx, "durable"); err != nil || dev != "dev-durable" {
		t.Errorf("completed stored session after restart: %q, %v", dev, err)
	}
	if _, err := s.CompletedSession(ctx, "done"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("completed memory session after restart: %v, want ErrNotFound", err)
	}
	if c, err := s.Certificate(ctx, "c1"); err != nil || c.SessionID != "done" {
		t.Errorf("certificate after restart: %+v, %v", c, err)
	}
}

// Sessions held in memory are capped: past MaxMemorySessions a begin is
// refused with ErrTooManySessions, and a finished one frees its place.
func TestBoltMemorySessionsCap(t *testing.T) {
	opts := store.DefaultOptions()
	opts.MemorySessions, opts.MaxMemorySessions = true, 3
	s, err := store.Open(filepath.Join(t.TempDir(), "enroll.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	now := time.Now()
	sess := func(id string) *store.Session {
		return &store.Session{ID: id, DeviceID: "dev-" + id, CreatedAt: now, ExpiresAt: now.Add(time.Minute)}
	}
	for _, id := range []string{"a", "b", "c"} {
		if err := s.CreateSession(ctx, sess(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateSession(ctx, sess("d")); !errors.Is(err, store.ErrTooManySessions) {
		t.Fatalf("fourth session: %v, want ErrTooManySessions", err)
	}
	if _, err := s.FinishEnrollment(ctx, "a", now, &store.IssuedCertificate{Serial: "01", DeviceID: "dev-a", SessionID: "a"},
		func(*store.Device) (*store.Device, *store.AuditRecord, error) {
			return &store.Device{ID: "dev-a", Status: store.StatusEnrolled}, nil, nil
		}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, sess("d")); err != nil {
		t.Fatalf("after a finish freed a place: %v", err)
	}
}

// memFixture is a store with helpers to begin and finish its sessions.
type memFixture struct {
	t *testing.T
	s *store.Bolt
}

var memT0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// openMem opens a store with live sessions in memory, at most maxSessions
// of them and as many tombstones (0: the default), closed on cleanup.
func openMem(t *testing.T, path string, maxSessions int) *memFixture {
	t.Helper()
	opts := memOptions()
	opts.MaxMemorySessions = maxSessions
	s, err := store.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &memFixture{t: t, s: s}
}

// begin creates session id of device "dev-"+id, expiring ttl after memT0.
func (f *memFixture) begin(id string, ttl time.Duration) error {
	return f.s.CreateSession(f.t.Context(), &store.Session{ID: id, DeviceID: "dev-" + id, CreatedAt: memT0, ExpiresAt: memT0.Add(ttl)})
}

// finish finishes session id at memT0, issuing certificate "cert-"+id.
func (f *memFixture) finish(id string) {
	f.t.Helper()
	_, err := f.s.FinishEnrollment(f.t.Context(), id, memT0, &store.IssuedCertificate{Serial: "cert-" + id, DeviceID: "dev-" + id, SessionID: id},
		func(*store.Device) (*store.Device, *store.AuditRecord, error) {
			return &store.Device{ID: "dev-" + id, Status: store.StatusEnrolled, LastSessionID: id}, nil, nil
		})
	if err != nil {
		f.t.Fatalf("finishing %s: %v", id, err)
	}
}

// wantCompleted checks CompletedSession for each id: its device if want,
// else ErrNotFound.
func (f *memFixture) wantCompleted(want bool, ids ...string) {
	f.t.Helper()
	for _, id := range ids {
		dev, err := f.s.CompletedSession(f.t.Context(), id)
		switch {
		case want && (err != nil || dev != "dev-"+id):
			f.t.Errorf("CompletedSession(%s) = %q, %v; want dev-%s", id, dev, err, id)
		case !want && !errors.Is(err, store.ErrNotFound):
			f.t.Errorf("CompletedSession(%s) = %q, %v; want ErrNotFound", id, dev, err)
		}
	}
}

// A session finished in memory leaves a tombstone: CompletedSession finds
// its device and its ID cannot be begun again until PurgeExpiredSessions
// drops it at its ExpiresAt.
func TestBoltMemorySessionsTombstone(t *testing.T) {
	f := openMem(t, filepath.Join(t.TempDir(), "enroll.db"), 0)
	ctx := t.Context()
	if err := f.begin("s1", time.Minute); err != nil {
		t.Fatal(err)
	}
	f.finish("s1")
	f.wantCompleted(true, "s1")
	if err := f.begin("s1", time.Minute); !errors.Is(err, store.ErrExists) {
		t.Errorf("beginning a finished session again: %v, want ErrExists", err)
	}
	if _, err := f.s.PurgeExpiredSessions(ctx, memT0.Add(time.Minute-time.Nanosecond)); err != nil {
		t.Fatal(err)
	}
	f.wantCompleted(true, "s1")
	if n, err := f.s.PurgeExpiredSessions(ctx, memT0.Add(time.Minute)); err != nil || n != 0 {
		t.Fatalf("purge = %d, %v; want 0 live sessions", n, err)
	}
	f.wantCompleted(false, "s1")
	if err := f.begin("s1", time.Minute); err != nil {
		t.Errorf("beginning the ID of a purged tombstone: %v", err)
	}
}

// Tombstones do not count toward the live sessions' cap, and have their
// own: past it the one expiring first is dropped, whatever the order of
// the finishes.
func TestBoltMemorySessionsTombstoneCap(t *testing.T) {
	f := openMem(t, filepath.Join(t.TempDir(), "enroll.db"), 2)
	ttls := map[string]time.Duration{"a": 3 * time.Minute, "b": time.Minute, "c": 2 * time.Minute, "d": 4 * time.Minute}
	for _, id := range []string{"a", "b", "c"} {
		if err := f.begin(id, ttls[id]); err != nil {
			t.Fatalf("beginning %s (tombstones are not live sessions): %v", id, err)
		}
		f.finish(id)
	}
	f.wantCompleted(false, "b")
	f.wantCompleted(true, "a", "c")
	if err := f.begin("d", ttls["d"]); err != nil {
		t.Fatal(err)
	}
	f.finish("d")
	f.wantCompleted(false, "b", "c")
	f.wantCompleted(true, "a", "d")
}

// With sessions in memory the completed_sessions bucket is not written;
// with sessions in the bucket it is.
func TestBoltCompletedSessionsBucket(t *testing.T) {
	for _, memory := range []bool{true, false} {
		t.Run(fmt.Sprintf("MemorySessions=%v", memory), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "enroll.db")
			opts := store.DefaultOptions()
			opts.MemorySessions = memory
			s, err := store.Open(path, opts)
			if err != nil {
				t.Fatal(err)
			}
			f := &memFixture{t: t, s: s}
			if err := f.begin("s1", time.Minute); err != nil {
				t.Fatal(err)
			}
			f.finish("s1")
			f.wantCompleted(true, "s1")
			s.Close()

			db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			got := map[string]string{}
			if err := db.View(func(tx *bolt.Tx) error {
				return tx.Bucket([]byte("completed_sessions")).ForEach(func(k, v []byte) error {
					got[string(k)] = string(v)
					return nil
				})
			}); err != nil {
				t.Fatal(err)
			}
			if memory && len(got) != 0 {
				t.Errorf("completed_sessions = %v, want empty", got)
			}
			if !memory && (len(got) != 1 || !strings.Contains(got["s1"], `"device_id":"dev-s1"`)) {
				t.Errorf("completed_sessions = %v, want s1 of dev-s1 only", got)
			}
		})
	}
}
