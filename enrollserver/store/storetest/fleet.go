package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// fleetTests are the conformance cases of store.FleetStore.
var fleetTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"AuditAppendOnlyInOrder", testAudit},
	{"FinishAppendsAudit", testFinishAudit},
	{"PendingCapAndRefresh", testPending},
	{"PendingExpiry", testPendingExpiry},
	{"UpdateDevicesStatusIndex", testUpdateDevices},
	{"UpdateDevicesErrorWritesNothing", testUpdateDevicesError},
	{"RevokeCertificates", testRevoke},
	{"CRLNumberMonotonic", testCRLNumber},
	{"OperatorRevocations", testOperatorRevocations},
	{"ConcurrentOperatorRevocation", testConcurrentOperatorRevocation},
	{"MergePreregistrationsSerialIndex", testMergePrereg},
	{"ImportStageCommit", testImport},
	{"ImportLimits", testImportLimits},
	{"ListOpenImports", testListImports},
	{"Groups", testGroups},
	{"ConfigVersionsMonotonic", testConfig},
	{"Stats", testStats},
}

func audit(action, target string) *store.AuditRecord {
	return &store.AuditRecord{Time: t0, ActorKind: "operator", ActorName: "alice", ActorRole: "admin", Action: action, Target: target, Outcome: "success"}
}

func auditLog(t *testing.T, s store.Store) []*store.AuditRecord {
	t.Helper()
	var out []*store.AuditRecord
	if err := s.AuditLog(context.Background(), 0, func(r *store.AuditRecord) bool { out = append(out, r); return true }); err != nil {
		t.Fatal(err)
	}
	return out
}

func actions(recs []*store.AuditRecord) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Action+" "+r.Target)
	}
	return out
}

func testAudit(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.AppendAudit(ctx, audit("a", "1"), audit("b", "2")); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAudit(ctx, audit("c", "3")); err != nil {
		t.Fatal(err)
	}
	recs := auditLog(t, s)
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Errorf("record %d has seq %d", i, r.Seq)
		}
	}
	if diff := cmp.Diff([]string{"a 1", "b 2", "c 3"}, actions(recs)); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
	var after []uint64
	s.AuditLog(ctx, 1, func(r *store.AuditRecord) bool { after = append(after, r.Seq); return len(after) < 1 })
	if diff := cmp.Diff([]uint64{2}, after); diff != "" {
		t.Errorf("after 1, first page of 1 (-want, +got):\n%s", diff)
	}
}

func testFinishAudit(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateSession(ctx, session("s1", "dev1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FinishEnrollment(ctx, "s1", t0, cert("c1", "dev1", "s1"), enroll("s1")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"certificate.issue dev1"}, actions(auditLog(t, s))); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
	// A refused finish appends nothing.
	if _, err := s.FinishEnrollment(ctx, "s1", t0, cert("c2", "dev1", "s1"), enroll("s1")); !errors.Is(err, store.ErrSessionUsed) {
		t.Fatal(err)
	}
	if n := len(auditLog(t, s)); n != 1 {
		t.Errorf("%d records after a refused finish, want 1", n)
	}
}

func pending(id string, exp time.Time) *store.Device {
	return &store.Device{ID: id, Status: store.StatusPending, Group: "g", PendingSince: t0, PendingExpiresAt: exp}
}

func testPending(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, id := range []string{"p1", "p2"} {
		if _, err := s.PutPending(ctx, pending(id, t0.Add(time.Hour)), 2, audit("device.pending", id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.PutPending(ctx, pending("p3", t0.Add(time.Hour)), 2, audit("device.pending", "p3")); !errors.Is(err, store.ErrPendingFull) {
		t.Fatalf("third pending with cap 2: %v, want ErrPendingFull", err)
	}
	// A pending device asking again refreshes its record, not the log.
	d, err := s.PutPending(ctx, pending("p1", t0.Add(2*time.Hour)), 2, audit("device.pending", "p1"))
	if err != nil || !d.PendingExpiresAt.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("refresh = %+v, %v", d, err)
	}
	if diff := cmp.Diff([]string{"device.pending p1", "device.pending p2"}, actions(auditLog(t, s))); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
	// A device with a decided record is returned, not made pending.
	if err := s.UpdateDevices(ctx, []string{"p2"}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		next := *prev
		next.Status = store.StatusApproved
		return &store.DeviceChange{Device: &next}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if d, err := s.PutPending(ctx, pending("p2", t0.Add(time.Hour)), 2, nil); !errors.Is(err, store.ErrExists) || d.Status != store.StatusApproved {
		t.Errorf("PutPending over an approved device = %+v, %v; want it and ErrExists", d, err)
	}
	var ids []string
	s.DevicesByStatus(ctx, store.StatusPending, "", func(d *store.Device) bool { ids = append(ids, d.ID); return true })
	if diff := cmp.Diff([]string{"p1"}, ids); diff != "" {
		t.Errorf("pending (-want, +got):\n%s", diff)
	}
}

func testPendingExpiry(t *testing.T, s store.Store) {
	ctx := context.Background()
	s.PutPending(ctx, pending("old", t0.Add(time.Minute)), 10, nil)
	s.PutPending(ctx, pending("new", t0.Add(time.Hour)), 10, nil)
	n, err := s.PurgeExpiredPending(ctx, t0.Add(time.Minute), func(d *store.Device) *store.AuditRecord {
		return audit("device.pending_expired", d.ID)
	})
	if err != nil || n != 1 {
		t.Fatalf("purge = %d, %v; want 1", n, err)
	}
	if _, err := s.Device(ctx, "old"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("expired pending device: %v", err)
	}
	if _, err := s.Device(ctx, "new"); err != nil {
		t.Errorf("live pending device: %v", err)
	}
	if diff := cmp.Diff([]string{"device.pending_expired old"}, actions(auditLog(t, s))); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
	// The freed slot counts: a cap of 1 admits another.
	if _, err := s.PutPending(ctx, pending("x", t0.Add(time.Hour)), 2, nil); err != nil {
		t.Errorf("after purge: %v", err)
	}
}

func testUpdateDevices(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		s.PutPending(ctx, pending(id, t0.Add(time.Hour)), 10, nil)
	}
	err := s.UpdateDevices(ctx, []string{"a", "c", "zz"}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		if prev == nil {
			return &store.DeviceChange{Audit: []*store.AuditRecord{audit("device.approve", id)}}, nil
		}
		next := *prev
		next.Status = store.StatusApproved
		return &store.DeviceChange{Device: &next, Audit: []*store.AuditRecord{audit("device.approve", id)}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	byStatus := func(st store.DeviceStatus) []string {
		var ids []string
		s.DevicesByStatus(ctx, st, "", func(d *store.Device) bool { ids = append(ids, d.ID); return true })
		return ids
	}
	if diff := cmp.Diff([]string{"b"}, byStatus(store.StatusPending)); diff != "" {
		t.Errorf("pending (-want, +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a", "c"}, byStatus(store.StatusApproved)); diff != "" {
		t.Errorf("approved (-want, +got):\n%s", diff)
	}
	var after []string
	s.DevicesByStatus(ctx, store.StatusApproved, "a", func(d *store.Device) bool { after = append(after, d.ID); return true })
	if diff := cmp.Diff([]string{"c"}, after); diff != "" {
		t.Errorf("approved after a (-want, +got):\n%s", diff)
	}
	var all []string
	s.DevicesAfter(ctx, "a", func(d *store.Device) bool { all = append(all, d.ID); return true })
	if diff := cmp.Diff([]string{"b", "c"}, all); diff != "" {
		t.Errorf("devices after a (-want, +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"device.approve a", "device.approve c", "device.approve zz"}, actions(auditLog(t, s))); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
}

func testUpdateDevicesError(t *testing.T, s store.Store) {
	ctx := context.Background()
	s.PutPending(ctx, pending("a", t0.Add(time.Hour)), 10, nil)
	s.PutPending(ctx, pending("b", t0.Add(time.Hour)), 10, nil)
	boom := errors.New("boom")
	err := s.UpdateDevices(ctx, []string{"a", "b"}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		if id == "b" {
			return nil, boom
		}
		next := *prev
		next.Status = store.StatusDenied
		return &store.DeviceChange{Device: &next, Audit: []*store.AuditRecord{audit("device.deny", id)}}, nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want fn's error", err)
	}
	if d, _ := s.Device(ctx, "a"); d.Status != store.StatusPending {
		t.Errorf("a = %s after an aborted update", d.Status)
	}
	if n := len(auditLog(t, s)); n != 0 {
		t.Errorf("%d audit records after an aborted update", n)
	}
}

func testRevoke(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i := range 3 {
		id := fmt.Sprintf("s%d", i)
		s.CreateSession(ctx, session(id, "dev1"))
		c := cert(fmt.Sprintf("c%d", i), "dev1", id)
		if _, err := s.FinishEnrollment(ctx, id, t0, c, enroll(id)); err != nil {
			t.Fatal(err)
		}
	}
	s.CreateSession(ctx, session("other", "dev2"))
	if _, err := s.FinishEnrollment(ctx, "other", t0, cert("d0", "dev2", "other"), func(*store.Device) (*store.Device, *store.AuditRecord, error) {
		return &store.Device{ID: "dev2", Status: store.StatusEnrolled}, nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	var ch *store.DeviceChange
	revokedAt := t0.Add(time.Minute)
	err := s.UpdateDevices(ctx, []string{"dev1"}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		next := *prev
		next.Status = store.StatusRevoked
		ch = &store.DeviceChange{Device: &next, Revoke: &store.Revocation{RevokedAt: revokedAt, Reason: "stolen", ReasonCode: 1},
			Audit: []*store.AuditRecord{audit("device.revoke", id)}}
		return ch, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"c0", "c1", "c2"}, ch.Revoked); diff != "" {
		t.Errorf("revoked (-want, +got):\n%s", diff)
	}
	var revs []*store.Revocation
	s.Revocations(ctx, func(r *store.Revocation) bool { revs = append(revs, r); return true })
	if len(revs) != 3 || revs[0].DeviceID != "dev1" || revs[0].ReasonCode != 1 || !revs[0].NotAfter.Equal(t0.Add(24*time.Hour)) {
		t.Fatalf("revocations = %+v", revs)
	}
	c, _ := s.Certificate(ctx, "c1")
	if !c.RevokedAt.Equal(revokedAt) || c.RevocationReason != "stolen" {
		t.Errorf("certificate record = %+v", c)
	}
	if c, _ := s.Certificate(ctx, "d0"); !c.RevokedAt.IsZero() {
		t.Errorf("another device's certificate was revoked")
	}
	var serials []string
	s.Certificates(ctx, "dev1", "c0", func(c *store.IssuedCertificate) bool { serials = append(serials, c.Serial); return true })
	if diff := cmp.Diff([]string{"c1", "c2"}, serials); diff != "" {
		t.Errorf("certificates of dev1 after c0 (-want, +got):\n%s", diff)
	}
	serials = nil
	s.Certificates(ctx, "", "", func(c *store.IssuedCertificate) bool { serials = append(serials, c.Serial); return true })
	if diff := cmp.Diff([]string{"c0", "c1", "c2", "d0"}, serials); diff != "" {
		t.Errorf("all certificates (-want, +got):\n%s", diff)
	}
	// Revoking again finds nothing new.
	s.UpdateDevices(ctx, []string{"dev1"}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		ch = &store.DeviceChange{Revoke: &store.Revocation{RevokedAt: revokedAt}}
		return ch, nil
	})
	if len(ch.Revoked) != 0 {
		t.Errorf("second revocation revoked %v", ch.Revoked)
	}
}

func testCRLNumber(t *testing.T, s store.Store) {
	ctx := context.Background()
	for want := uint64(1); want <= 3; want++ {
		if n, err := s.NextCRLNumber(ctx); err != nil || n != want {
			t.Fatalf("NextCRLNumber = %d, %v; want %d", n, err, want)
		}
	}
}

func operatorRevocation(serial string) *store.OperatorRevocation {
	return &store.OperatorRevocation{Serial: serial, Operator: "operator/bob", RevokedAt: t0.Add(time.Minute), RevokedBy: "admin/alice", Reason: "laptop lost"}
}

func testOperatorRevocations(t *testing.T, s store.Store) {
	ctx := context.Background()
	want := operatorRevocation("4f2a")
	if changed, err := s.RevokeOperator(ctx, want, audit("operator.revoke", "4f2a")); err != nil || !changed {
		t.Fatalf("first revoke = %v, %v; want true", changed, err)
	}
	// Revoking again writes nothing: the first record stays, and no audit
	// record is appended.
	again := operatorRevocation("4f2a")
	again.RevokedAt, again.RevokedBy, again.Reason = t0.Add(time.Hour), "admin/carol", "again"
	if changed, err := s.RevokeOperator(ctx, again, audit("operator.revoke", "4f2a again")); err != nil || changed {
		t.Errorf("second revoke = %v, %v; want false", changed, err)
	}
	got, err := s.OperatorRevocation(ctx, "4f2a")
	if err != nil {
		t.Fatal(err)
	}
	// cmp compares the times with their Equal method.
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("revocation (-want, +got):\n%s", diff)
	}
	if _, err := s.OperatorRevocation(ctx, "4f2b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unrevoked serial: %v, want ErrNotFound", err)
	}
	if _, err := s.RevokeOperator(ctx, operatorRevocation(""), audit("operator.revoke", "")); err == nil {
		t.Error("RevokeOperator accepted an empty serial")
	}
	for _, serial := range []string{"ff", "0a", "10"} {
		if _, err := s.RevokeOperator(ctx, operatorRevocation(serial), audit("operator.revoke", serial)); err != nil {
			t.Fatal(err)
		}
	}
	list := func(n int) []string {
		t.Helper()
		var out []string
		if err := s.OperatorRevocations(ctx, func(r *store.OperatorRevocation) bool {
			out = append(out, r.Serial)
			return len(out) < n
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if diff := cmp.Diff([]string{"0a", "10", "4f2a", "ff"}, list(100)); diff != "" {
		t.Errorf("revocations in serial order (-want, +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"0a", "10"}, list(2)); diff != "" {
		t.Errorf("listing stopped after 2 (-want, +got):\n%s", diff)
	}
	recs := auditLog(t, s)
	if diff := cmp.Diff([]string{"operator.revoke 4f2a", "operator.revoke ff", "operator.revoke 0a", "operator.revoke 10"}, actions(recs)); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
	if len(recs) > 0 && recs[0].Seq != 1 {
		t.Errorf("first revocation's audit record has seq %d, want 1", recs[0].Seq)
	}
}

// testConcurrentOperatorRevocation: of revocations of one serial at once,
// exactly one writes its record and audit record.
func testConcurrentOperatorRevocation(t *testing.T, s store.Store) {
	ctx := context.Background()
	var changed atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := s.RevokeOperator(ctx, operatorRevocation("4f2a"), audit("operator.revoke", fmt.Sprint(i)))
			if err != nil {
				t.Errorf("revoke %d: %v", i, err)
			}
			if ok {
				changed.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := changed.Load(); n != 1 {
		t.Errorf("%d revocations reported a change, want 1", n)
	}
	if n := len(auditLog(t, s)); n != 1 {
		t.Errorf("%d audit records, want 1", n)
	}
}

func testMergePrereg(t *testing.T, s store.Store) {
	ctx := context.Background()
	put := func(regs ...*store.Preregistration) error {
		return s.MergePreregistrations(ctx, func(r store.PreregReader) (*store.PreregPlan, error) {
			return &store.PreregPlan{Put: regs, Audit: []*store.AuditRecord{audit("preregister", "")}}, nil
		})
	}
	if err := put(&store.Preregistration{DeviceID: "a", Serial: "SN1"}, &store.Preregistration{DeviceID: "b", Serial: "SN2"}); err != nil {
		t.Fatal(err)
	}
	var owner string
	s.MergePreregistrations(ctx, func(r store.PreregReader) (*store.PreregPlan, error) {
		owner, _ = r.SerialOwner("SN1")
		return nil, nil
	})
	if owner != "a" {
		t.Errorf("SN1 owner = %q, want a", owner)
	}
	// Prefetched reads answer as unprefetched ones, for stored and
	// absent records alike.
	if err := s.MergePreregistrations(ctx, func(r store.PreregReader) (*store.PreregPlan, error) {
		rows := []*store.StagedRow{{Line: 1, DeviceID: "a", Serial: "SN1", Group: "line-a"}, {Line: 2, DeviceID: "zz", Serial: "SN-none"}}
		if err := r.Prefetch(rows); err != nil {
			return nil, err
		}
		if p, err := r.Preregistration("a"); err != nil || p == nil || p.Serial != "SN1" {
			t.Errorf("prefetched Preregistration(a) = %+v, %v", p, err)
		}
		if p, err := r.Preregistration("zz"); err != nil || p != nil {
			t.Errorf("prefetched Preregistration(zz) = %+v, %v; want nil", p, err)
		}
		if o, err := r.SerialOwner("SN1"); err != nil || o != "a" {
			t.Errorf("prefetched SerialOwner(SN1) = %q, %v", o, err)
		}
		if o, err := r.SerialOwner("SN-none"); err != nil || o != "" {
			t.Errorf("prefetched SerialOwner(SN-none) = %q, %v; want none", o, err)
		}
		if g, err := r.Group("line-a"); err != nil || g != nil {
			t.Errorf("prefetched Group(line-a) = %+v, %v; want none", g, err)
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	// Another device taking a serial is refused, and nothing of the batch
	// is written.
	if err := put(&store.Preregistration{DeviceID: "c", Serial: "SN3"}, &store.Preregistration{DeviceID: "d", Serial: "SN1"}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("serial takeover: %v, want ErrExists", err)
	}
	if _, err := s.Preregistration(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("half a refused batch was written")
	}
	// A device changing its serial frees the old one.
	if err := put(&store.Preregistration{DeviceID: "a", Serial: "SN9"}); err != nil {
		t.Fatal(err)
	}
	if err := put(&store.Preregistration{DeviceID: "e", Serial: "SN1"}); err != nil {
		t.Errorf("freed serial: %v", err)
	}
	if n := len(auditLog(t, s)); n != 3 {
		t.Errorf("%d audit records, want 3 (the refused batch wrote none)", n)
	}
}

func testImport(t *testing.T, s store.Store) {
	ctx := context.Background()
	b := &store.ImportBatch{ID: "i1", Operator: "factory/x", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := s.CreateImport(ctx, b, 4, 4); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateImport(ctx, b, 4, 4); !errors.Is(err, store.ErrExists) {
		t.Errorf("same ID again: %v", err)
	}
	rows := []*store.StagedRow{{Line: 3, DeviceID: "b", Serial: "SN2"}, {Line: 2, DeviceID: "a", Serial: "SN1"}}
	if _, err := s.StageImport(ctx, "i1", t0, rows, []store.RowError{{Line: 4, Code: "bad_request", Reason: "x"}}, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StageImport(ctx, "i1", t0, []*store.StagedRow{{Line: 2, DeviceID: "z"}}, nil, 100); !errors.Is(err, store.ErrExists) {
		t.Errorf("line staged twice: %v", err)
	}
	got, err := s.Import(ctx, "i1")
	if err != nil || got.Staged != 2 || len(got.Rejected) != 1 {
		t.Fatalf("import = %+v, %v", got, err)
	}
	var lines []int
	err = s.CommitImport(ctx, "i1", t0, func(b *store.ImportBatch, rows []*store.StagedRow, r store.PreregReader) (*store.PreregPlan, error) {
		plan := &store.PreregPlan{Audit: []*store.AuditRecord{audit("import.commit", "i1")}}
		for _, row := range rows {
			lines = append(lines, row.Line)
			plan.Put = append(plan.Put, &store.Preregistration{DeviceID: row.DeviceID, Serial: row.Serial})
		}
		return plan, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{2, 3}, lines); diff != "" {
		t.Errorf("rows in line order (-want, +got):\n%s", diff)
	}
	if _, err := s.Preregistration(ctx, "b"); err != nil {
		t.Errorf("committed row: %v", err)
	}
	if _, err := s.Import(ctx, "i1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("import after commit: %v, want ErrNotFound", err)
	}
	// A plan error writes nothing and keeps the import.
	s.CreateImport(ctx, &store.ImportBatch{ID: "i2", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 4, 4)
	s.StageImport(ctx, "i2", t0, []*store.StagedRow{{Line: 2, DeviceID: "c"}}, nil, 100)
	boom := errors.New("boom")
	if err := s.CommitImport(ctx, "i2", t0, func(*store.ImportBatch, []*store.StagedRow, store.PreregReader) (*store.PreregPlan, error) {
		return nil, boom
	}); !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if _, err := s.Import(ctx, "i2"); err != nil {
		t.Errorf("import after a failed commit: %v", err)
	}
	if err := s.DeleteImport(ctx, "i2"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImport(ctx, "i2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
}

func testImportLimits(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i := range 2 {
		if err := s.CreateImport(ctx, &store.ImportBatch{ID: fmt.Sprint(i), Operator: fmt.Sprint("station-", i), CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 2, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateImport(ctx, &store.ImportBatch{ID: "x", Operator: "station-9", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 2, 1); !errors.Is(err, store.ErrTooManyImports) {
		t.Errorf("third import with max 2: %v", err)
	}
	// One operator's share: station-0 holds one of at most one, while
	// others still have room.
	if err := s.CreateImport(ctx, &store.ImportBatch{ID: "x", Operator: "station-0", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 3, 1); !errors.Is(err, store.ErrOperatorImports) {
		t.Errorf("second import of one operator with a share of 1: %v", err)
	}
	if err := s.CreateImport(ctx, &store.ImportBatch{ID: "x", Operator: "station-2", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 3, 1); err != nil {
		t.Errorf("another operator's first import: %v", err)
	}
	if err := s.DeleteImport(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StageImport(ctx, "0", t0, []*store.StagedRow{{Line: 1}, {Line: 2}, {Line: 3}}, nil, 2); !errors.Is(err, store.ErrImportTooLarge) {
		t.Errorf("3 rows with max 2: %v", err)
	}
	if _, err := s.StageImport(ctx, "0", t0.Add(time.Hour), []*store.StagedRow{{Line: 1}}, nil, 2); !errors.Is(err, store.ErrImportExpired) {
		t.Errorf("after expiry: %v", err)
	}
	if err := s.CommitImport(ctx, "0", t0.Add(time.Hour), nil); !errors.Is(err, store.ErrImportExpired) {
		t.Errorf("commit after expiry: %v", err)
	}
	// Expired imports hold no slot, before they are purged too.
	if err := s.CreateImport(ctx, &store.ImportBatch{ID: "z", Operator: "station-0", CreatedAt: t0.Add(time.Hour), ExpiresAt: t0.Add(2 * time.Hour)}, 1, 1); err != nil {
		t.Errorf("an import once the others expired, unpurged: %v", err)
	}
	if err := s.DeleteImport(ctx, "z"); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PurgeExpiredImports(ctx, t0.Add(time.Hour)); err != nil || n != 2 {
		t.Errorf("purge = %d, %v; want 2", n, err)
	}
	if err := s.CreateImport(ctx, &store.ImportBatch{ID: "y", Operator: "station-0", CreatedAt: t0.Add(time.Hour), ExpiresAt: t0.Add(2 * time.Hour)}, 2, 1); err != nil {
		t.Errorf("after purge: %v", err)
	}
}

// testListImports: ListImports returns the open imports with their
// fields, oldest first (ties by ID), bounded by its limit; expired,
// committed and deleted ones are not listed.
func testListImports(t *testing.T, s store.Store) {
	ctx := context.Background()
	list := func(now time.Time, limit int) []*store.ImportBatch {
		t.Helper()
		got, err := s.ListImports(ctx, now, limit)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := list(t0, 10); len(got) != 0 {
		t.Errorf("no imports: listed %d", len(got))
	}
	// IDs against creation order: the list is ordered by CreatedAt.
	first := &store.ImportBatch{ID: "b-first", Operator: "factory/a", Source: "a.csv", SHA256: strings.Repeat("ab", 32), Partial: true,
		CreatedAt: t0, ExpiresAt: t0.Add(time.Hour), CorrelationID: "corr-1"}
	tie := &store.ImportBatch{ID: "d-tie", Operator: "factory/b", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	second := &store.ImportBatch{ID: "a-second", Operator: "factory/b", Source: "b.jsonl", DryRun: true,
		CreatedAt: t0.Add(time.Minute), ExpiresAt: t0.Add(time.Hour + time.Minute)}
	expired := &store.ImportBatch{ID: "c-expired", Operator: "factory/a", CreatedAt: t0.Add(-2 * time.Hour), ExpiresAt: t0.Add(-time.Hour)}
	committed := &store.ImportBatch{ID: "e-committed", Operator: "factory/a", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	deleted := &store.ImportBatch{ID: "f-deleted", Operator: "factory/a", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	for _, b := range []*store.ImportBatch{expired, second, first, tie, committed, deleted} {
		if err := s.CreateImport(ctx, b, 10, 10); err != nil {
			t.Fatalf("creating %s: %v", b.ID, err)
		}
	}
	rejected := []store.RowError{{Line: 4, Code: "bad_request", Reason: "x"}}
	if _, err := s.StageImport(ctx, first.ID, t0, []*store.StagedRow{{Line: 2, DeviceID: "a"}, {Line: 3, DeviceID: "b"}}, rejected, 100); err != nil {
		t.Fatal(err)
	}
	first.Staged, first.Rejected = 2, rejected
	if err := s.CommitImport(ctx, committed.ID, t0, func(*store.ImportBatch, []*store.StagedRow, store.PreregReader) (*store.PreregPlan, error) {
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImport(ctx, deleted.ID); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(30 * time.Second)
	if diff := cmp.Diff([]*store.ImportBatch{first, tie, second}, list(now, 10)); diff != "" {
		t.Errorf("open imports (-want, +got):\n%s", diff)
	}
	if diff := cmp.Diff([]*store.ImportBatch{first, tie}, list(now, 2)); diff != "" {
		t.Errorf("open imports, limit 2 (-want, +got):\n%s", diff)
	}
	if got := list(now, 0); len(got) != 0 {
		t.Errorf("limit 0: listed %d", len(got))
	}
	// At its ExpiresAt an import is expired, as StageImport says.
	if diff := cmp.Diff([]*store.ImportBatch{second}, list(t0.Add(time.Hour), 10)); diff != "" {
		t.Errorf("open imports at the first two's expiry (-want, +got):\n%s", diff)
	}
}

func testGroups(t *testing.T, s store.Store) {
	ctx := context.Background()
	for _, adm := range []string{"auto", "manual"} {
		if _, err := s.UpdateGroup(ctx, "g", func(prev *store.Group) (*store.Group, *store.AuditRecord, error) {
			return &store.Group{Name: "g", Admission: adm, UpdatedAt: t0}, audit("group.set", "g"), nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	g, err := s.Group(ctx, "g")
	if err != nil || g.Admission != "manual" {
		t.Fatalf("group = %+v, %v", g, err)
	}
	if _, err := s.Group(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown group: %v", err)
	}
	if _, err := s.UpdateGroup(ctx, "h", func(*store.Group) (*store.Group, *store.AuditRecord, error) {
		return &store.Group{Name: "other"}, nil, nil
	}); err == nil {
		t.Error("UpdateGroup wrote a group of another name")
	}
	var names []string
	s.Groups(ctx, func(g *store.Group) bool { names = append(names, g.Name); return true })
	if diff := cmp.Diff([]string{"g"}, names); diff != "" {
		t.Errorf("groups (-want, +got):\n%s", diff)
	}
	if n := len(auditLog(t, s)); n != 2 {
		t.Errorf("%d audit records, want 2", n)
	}
}

func testConfig(t *testing.T, s store.Store) {
	ctx := context.Background()
	put := func(scope string, floor uint64) *store.ConfigVersion {
		t.Helper()
		cv, err := s.PutConfig(ctx, scope, floor, func(latest *store.ConfigVersion, next uint64) (*store.ConfigVersion, *store.AuditRecord, error) {
			return &store.ConfigVersion{Scope: scope, Version: next, Config: []byte(fmt.Sprintf(`{"v":%d}`, next)), CreatedAt: t0}, audit("config.set", scope), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return cv
	}
	if v := put("group/a", 5).Version; v != 6 {
		t.Errorf("first version with floor 5 = %d, want 6", v)
	}
	if v := put("group/b", 0).Version; v != 7 {
		t.Errorf("another scope's version = %d, want 7 (one counter for all scopes)", v)
	}
	if v := put("group/a", 0).Version; v != 8 {
		t.Errorf("version = %d, want 8", v)
	}
	// "group/a" must not see "group/ab".
	put("group/ab", 0)
	latest, err := s.Config(ctx, "group/a", 0)
	if err != nil || latest.Version != 8 {
		t.Fatalf("latest of group/a = %+v, %v", latest, err)
	}
	if v6, err := s.Config(ctx, "group/a", 6); err != nil || string(v6.Config) != `{"v":6}` {
		t.Errorf("version 6 = %+v, %v", v6, err)
	}
	if _, err := s.Config(ctx, "group/a", 7); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("version 7 of group/a (it is group/b's): %v", err)
	}
	if _, err := s.Config(ctx, "group/zz", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown scope: %v", err)
	}
	var hist []uint64
	s.ConfigHistory(ctx, "group/a", func(cv *store.ConfigVersion) bool { hist = append(hist, cv.Version); return true })
	if diff := cmp.Diff([]uint64{8, 6}, hist); diff != "" {
		t.Errorf("history newest first (-want, +got):\n%s", diff)
	}
	if _, err := s.PutConfig(ctx, "group/a", 0, func(_ *store.ConfigVersion, next uint64) (*store.ConfigVersion, *store.AuditRecord, error) {
		return &store.ConfigVersion{Scope: "group/a", Version: next - 1}, nil, nil
	}); err == nil {
		t.Error("PutConfig accepted a version below the counter")
	}
}

func testStats(t *testing.T, s store.Store) {
	ctx := context.Background()
	s.PutPending(ctx, pending("p", t0.Add(time.Hour)), 10, audit("device.pending", "p"))
	s.PutPreregistrations(ctx, []*store.Preregistration{{DeviceID: "a"}, {DeviceID: "b"}})
	s.NextCRLNumber(ctx)
	st, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Devices[store.StatusPending] != 1 || st.Preregistrations != 2 || st.AuditRecords != 1 || st.CRLNumber != 1 {
		t.Errorf("stats = %+v", st)
	}
}
