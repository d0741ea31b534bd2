// Package storetest is the conformance suite every store.Store
// implementation must pass. Run it from the implementation's tests:
//
//	storetest.Run(t, func(t *testing.T) store.Store { ... })
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Run runs the suite. newStore returns an empty store; the suite closes it.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"SessionRoundTrip", testSessionRoundTrip},
		{"SessionIDUnique", testSessionIDUnique},
		{"SessionExpiry", testSessionExpiry},
		{"FinishConsumesSessionOnce", testFinishOnce},
		{"FinishExpired", testFinishExpired},
		{"FinishApplyErrorWritesNothing", testFinishApplyError},
		{"ReenrollKeepsOneRecord", testReenroll},
		{"ConcurrentFinishSameSession", testConcurrentFinish},
		{"Preregistrations", testPreregistrations},
		{"Purge", testPurge},
	}
	tests = append(tests, fleetTests...)
	tests = append(tests, firmwareTests...)
	tests = append(tests, bulkTests...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() { s.Close() })
			tt.fn(t, s)
		})
	}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func session(id, device string) *store.Session {
	return &store.Session{
		ID: id, DeviceID: device, CorrelationID: "corr-" + id,
		EKPublic: []byte("ek"), AKPublic: []byte("ak"), Nonce: []byte("nonce-0123456789"),
		ProofHash: []byte("proof"), PCRs: []int{0, 7}, Admission: store.AdmissionEKCertificate,
		CreatedAt: t0, ExpiresAt: t0.Add(time.Minute),
	}
}

func cert(serial, device, sess string) *store.IssuedCertificate {
	return &store.IssuedCertificate{Serial: serial, DeviceID: device, SessionID: sess, NotBefore: t0, NotAfter: t0.Add(24 * time.Hour)}
}

func enroll(sessionID string) func(prev *store.Device) (*store.Device, *store.AuditRecord, error) {
	return func(prev *store.Device) (*store.Device, *store.AuditRecord, error) {
		d := &store.Device{ID: "dev1", Status: store.StatusEnrolled, LastSessionID: sessionID, LastEnrolledAt: t0}
		if prev != nil {
			d.Enrollments = prev.Enrollments
			d.FirstEnrolledAt = prev.FirstEnrolledAt
		} else {
			d.FirstEnrolledAt = t0
		}
		d.Enrollments++
		return d, &store.AuditRecord{Time: t0, ActorKind: "device", ActorName: "dev1", Action: "certificate.issue", Target: "dev1", Outcome: "success"}, nil
	}
}

func testSessionRoundTrip(t *testing.T, s store.Store) {
	ctx := context.Background()
	want := session("s1", "dev1")
	if err := s.CreateSession(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Session(ctx, "s1", t0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("session (-want, +got):\n%s", diff)
	}
	if _, err := s.Session(ctx, "nope", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown session: got %v, want ErrNotFound", err)
	}
}

func testSessionIDUnique(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateSession(ctx, session("s1", "dev1")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession(ctx, session("s1", "dev2")); !errors.Is(err, store.ErrExists) {
		t.Errorf("duplicate session ID: got %v, want ErrExists", err)
	}
}

func testSessionExpiry(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateSession(ctx, session("s1", "dev1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(ctx, "s1", t0.Add(time.Minute)); !errors.Is(err, store.ErrSessionExpired) {
		t.Errorf("at expiry: got %v, want ErrSessionExpired", err)
	}
}

func testFinishOnce(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateSession(ctx, session("s1", "dev1")); err != nil {
		t.Fatal(err)
	}
	d, err := s.FinishEnrollment(ctx, "s1", t0, cert("c1", "dev1", "s1"), enroll("s1"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Enrollments != 1 {
		t.Errorf("enrollments = %d, want 1", d.Enrollments)
	}
	if _, err := s.FinishEnrollment(ctx, "s1", t0, cert("c2", "dev1", "s1"), enroll("s1")); !errors.Is(err, store.ErrSessionUsed) {
		t.Errorf("second finish: got %v, want ErrSessionUsed", err)
	}
	if _, err := s.Session(ctx, "s1", t0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("session after finish: got %v, want ErrNotFound", err)
	}
	if dev, err := s.CompletedSession(ctx, "s1"); err != nil || dev != "dev1" {
		t.Errorf("CompletedSession = %q, %v; want dev1", dev, err)
	}
	if _, err := s.PurgeExpiredSessions(ctx, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompletedSession(ctx, "s1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CompletedSession after purge: %v, want ErrNotFound", err)
	}
	if _, err := s.Certificate(ctx, "c2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("refused finish recorded its certificate: %v", err)
	}
	c, err := s.Certificate(ctx, "c1")
	if err != nil || c.DeviceID != "dev1" {
		t.Errorf("certificate c1 = %+v, %v", c, err)
	}
}

func testFinishExpired(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateSession(ctx, session("s1", "dev1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FinishEnrollment(ctx, "s1", t0.Add(2*time.Minute), cert("c1", "dev1", "s1"), enroll("s1")); !errors.Is(err, store.ErrSessionExpired) {
		t.Errorf("finish after expiry: got %v, want ErrSessionExpired", err)
	}
	if _, err := s.Device(ctx, "dev1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("expired finish wrote a device: %v", err)
	}
}

func testFinishApplyError(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateSession(ctx, session("s1", "dev1")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	_, err := s.FinishEnrollment(ctx, "s1", t0, cert("c1", "dev1", "s1"), func(*store.Device) (*store.Device, *store.AuditRecord, error) { return nil, nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want apply's error", err)
	}
	if _, err := s.Session(ctx, "s1", t0); err != nil {
		t.Errorf("session consumed by a failed finish: %v", err)
	}
	if _, err := s.Certificate(ctx, "c1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("failed finish recorded a certificate: %v", err)
	}
}

func testReenroll(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i := range 3 {
		id := fmt.Sprintf("s%d", i)
		if err := s.CreateSession(ctx, session(id, "dev1")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.FinishEnrollment(ctx, id, t0, cert("c"+id, "dev1", id), enroll(id)); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := s.Devices(ctx, func(d *store.Device) bool {
		n++
		if d.Enrollments != 3 || d.LastSessionID != "s2" {
			t.Errorf("device = %+v, want 3 enrollments, last session s2", d)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d device records, want 1", n)
	}
}

func testConcurrentFinish(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateSession(ctx, session("s1", "dev1")); err != nil {
		t.Fatal(err)
	}
	var ok, used atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.FinishEnrollment(ctx, "s1", t0, cert(fmt.Sprintf("c%d", i), "dev1", "s1"), enroll("s1"))
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, store.ErrSessionUsed):
				used.Add(1)
			default:
				t.Errorf("finish %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || used.Load() != 15 {
		t.Errorf("%d finishes succeeded and %d were refused, want 1 and 15", ok.Load(), used.Load())
	}
}

func testPreregistrations(t *testing.T, s store.Store) {
	ctx := context.Background()
	regs := []*store.Preregistration{
		{DeviceID: "a", Serial: "SN1", Group: "g", Labels: map[string]string{"line": "1"}, CreatedAt: t0},
		{DeviceID: "b", Serial: "SN2", CreatedAt: t0},
	}
	if err := s.PutPreregistrations(ctx, regs); err != nil {
		t.Fatal(err)
	}
	// Re-importing the same rows keeps the original records.
	again := []*store.Preregistration{{DeviceID: "a", Serial: "SN1", Group: "g", Labels: map[string]string{"line": "1"}, CreatedAt: t0.Add(time.Hour)}}
	if err := s.PutPreregistrations(ctx, again); err != nil {
		t.Fatal(err)
	}
	got, err := s.Preregistration(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(regs[0], got); diff != "" {
		t.Errorf("pre-registration after identical re-import (-want, +got):\n%s", diff)
	}
	var ids []string
	if err := s.Preregistrations(ctx, func(p *store.Preregistration) bool { ids = append(ids, p.DeviceID); return true }); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a", "b"}, ids); diff != "" {
		t.Errorf("listing (-want, +got):\n%s", diff)
	}
	if _, err := s.Preregistration(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown: got %v, want ErrNotFound", err)
	}
}

func testPurge(t *testing.T, s store.Store) {
	ctx := context.Background()
	old := session("old", "dev1")
	fresh := session("fresh", "dev2")
	fresh.ExpiresAt = t0.Add(time.Hour)
	for _, x := range []*store.Session{old, fresh} {
		if err := s.CreateSession(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PurgeExpiredSessions(ctx, t0.Add(2*time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("purge = %d, %v; want 1", n, err)
	}
	if _, err := s.Session(ctx, "fresh", t0); err != nil {
		t.Errorf("purge deleted a live session: %v", err)
	}
}
