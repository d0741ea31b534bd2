package store_test

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

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
// gone after it (the device begins again), a finished one is durable, and
// a session an earlier run without MemorySessions stored is still
// consumed once.
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
	for _, id := range []string{"done", "durable"} {
		if dev, err := s.CompletedSession(ctx, id); err != nil || dev != "dev-"+id {
			t.Errorf("completed session %s after restart: %q, %v", id, dev, err)
		}
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
