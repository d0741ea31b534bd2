package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// bulkTests pin what large writes do: a store whose transactions are
// capped (etcd) must still give bbolt's results.
var bulkTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"BulkMergePreregistrations", testBulkMerge},
	{"BulkImport", testBulkImport},
	{"BulkUpdateDevices", testBulkUpdateDevices},
	{"BulkRevokeManyCertificates", testBulkRevoke},
}

// bulkRows is well above what one etcd transaction takes (128 operations).
const bulkRows = 600

func testBulkMerge(t *testing.T, s store.Store) {
	ctx := context.Background()
	var regs []*store.Preregistration
	for i := range bulkRows {
		regs = append(regs, &store.Preregistration{DeviceID: fmt.Sprintf("d%05d", i), Serial: fmt.Sprintf("SN%05d", i), Group: "g", CreatedAt: t0})
	}
	merge := func(regs []*store.Preregistration) error {
		return s.MergePreregistrations(ctx, func(store.PreregReader) (*store.PreregPlan, error) {
			return &store.PreregPlan{Put: regs, Audit: []*store.AuditRecord{audit("preregister", fmt.Sprint(len(regs)))}}, nil
		})
	}
	if err := merge(regs); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := s.Preregistrations(ctx, func(p *store.Preregistration) bool {
		if want := fmt.Sprintf("d%05d", n); p.DeviceID != want {
			t.Fatalf("pre-registration %d = %s, want %s", n, p.DeviceID, want)
		}
		n++
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if n != bulkRows {
		t.Errorf("%d pre-registrations, want %d", n, bulkRows)
	}
	// A large batch with one serial taken by another device writes none
	// of its rows.
	var again []*store.Preregistration
	for i := range bulkRows {
		again = append(again, &store.Preregistration{DeviceID: fmt.Sprintf("e%05d", i), Serial: fmt.Sprintf("SNE%05d", i)})
	}
	again[bulkRows/2].Serial = "SN00007"
	if err := merge(again); !errors.Is(err, store.ErrExists) {
		t.Fatalf("batch taking a serial: %v, want ErrExists", err)
	}
	if _, err := s.Preregistration(ctx, "e00000"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a row of the refused batch was written: %v", err)
	}
	var owner string
	s.MergePreregistrations(ctx, func(r store.PreregReader) (*store.PreregPlan, error) {
		owner, _ = r.SerialOwner(fmt.Sprintf("SN%05d", bulkRows-1))
		return nil, nil
	})
	if want := fmt.Sprintf("d%05d", bulkRows-1); owner != want {
		t.Errorf("serial owner = %q, want %s", owner, want)
	}
	if diff := cmp.Diff([]string{fmt.Sprintf("preregister %d", bulkRows)}, actions(auditLog(t, s))); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
	if st, err := s.Stats(ctx); err != nil || st.Preregistrations != bulkRows {
		t.Errorf("stats = %+v, %v", st, err)
	}
}

func testBulkImport(t *testing.T, s store.Store) {
	ctx := context.Background()
	if err := s.CreateImport(ctx, &store.ImportBatch{ID: "big", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}, 4, 4); err != nil {
		t.Fatal(err)
	}
	// Staged in two chunks, the second before the first in line order.
	for _, first := range []int{bulkRows/2 + 1, 1} {
		var rows []*store.StagedRow
		for line := first; line < first+bulkRows/2; line++ {
			rows = append(rows, &store.StagedRow{Line: line, DeviceID: fmt.Sprintf("d%05d", line), Serial: fmt.Sprintf("SN%05d", line)})
		}
		if _, err := s.StageImport(ctx, "big", t0, rows, nil, 10*bulkRows); err != nil {
			t.Fatal(err)
		}
	}
	var lines []int
	err := s.CommitImport(ctx, "big", t0, func(b *store.ImportBatch, rows []*store.StagedRow, r store.PreregReader) (*store.PreregPlan, error) {
		lines = lines[:0]
		plan := &store.PreregPlan{Audit: []*store.AuditRecord{audit("import.commit", "big")}}
		for _, row := range rows {
			lines = append(lines, row.Line)
			if p, err := r.Preregistration(row.DeviceID); err != nil || p != nil {
				return nil, fmt.Errorf("row %d: pre-registration %v, %v before the commit", row.Line, p, err)
			}
			plan.Put = append(plan.Put, &store.Preregistration{DeviceID: row.DeviceID, Serial: row.Serial})
		}
		if b.Staged != bulkRows {
			return nil, fmt.Errorf("staged = %d, want %d", b.Staged, bulkRows)
		}
		return plan, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != bulkRows || lines[0] != 1 || lines[len(lines)-1] != bulkRows {
		t.Errorf("plan saw %d rows from line %v", len(lines), lines[:min(3, len(lines))])
	}
	for i := 1; i < len(lines); i++ {
		if lines[i] <= lines[i-1] {
			t.Fatalf("rows out of line order at %d: %d after %d", i, lines[i], lines[i-1])
		}
	}
	if st, err := s.Stats(ctx); err != nil || st.Preregistrations != bulkRows {
		t.Errorf("stats = %+v, %v", st, err)
	}
	if _, err := s.Import(ctx, "big"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("import after commit: %v", err)
	}
}

func testBulkUpdateDevices(t *testing.T, s store.Store) {
	ctx := context.Background()
	const n = 150
	var ids []string
	for i := range n {
		id := fmt.Sprintf("p%04d", i)
		ids = append(ids, id)
		if _, err := s.PutPending(ctx, pending(id, t0.Add(time.Hour)), n, nil); err != nil {
			t.Fatal(err)
		}
	}
	// An error from fn for the last device writes nothing.
	boom := errors.New("boom")
	approve := func(failAt string) error {
		return s.UpdateDevices(ctx, ids, func(id string, prev *store.Device) (*store.DeviceChange, error) {
			if id == failAt {
				return nil, boom
			}
			next := *prev
			next.Status = store.StatusApproved
			return &store.DeviceChange{Device: &next, Audit: []*store.AuditRecord{audit("device.approve", id)}}, nil
		})
	}
	if err := approve(ids[n-1]); !errors.Is(err, boom) {
		t.Fatalf("got %v, want fn's error", err)
	}
	if st, _ := s.Stats(ctx); st.Devices[store.StatusApproved] != 0 || len(auditLog(t, s)) != 0 {
		t.Fatalf("an update whose fn failed wrote %d approvals", st.Devices[store.StatusApproved])
	}
	if err := approve(""); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats(ctx)
	if err != nil || st.Devices[store.StatusApproved] != n || st.Devices[store.StatusPending] != 0 {
		t.Errorf("stats = %+v, %v", st, err)
	}
	recs := auditLog(t, s)
	if len(recs) != n {
		t.Fatalf("%d audit records, want %d", len(recs), n)
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) || r.Target != ids[i] {
			t.Fatalf("audit record %d = seq %d target %s, want seq %d target %s", i, r.Seq, r.Target, i+1, ids[i])
		}
	}
}

func testBulkRevoke(t *testing.T, s store.Store) {
	ctx := context.Background()
	const n = 80
	var want []string
	for i := range n {
		id := fmt.Sprintf("s%03d", i)
		if err := s.CreateSession(ctx, session(id, "dev1")); err != nil {
			t.Fatal(err)
		}
		serial := fmt.Sprintf("c%03d", i)
		want = append(want, serial)
		if _, err := s.FinishEnrollment(ctx, id, t0, cert(serial, "dev1", id), enroll(id)); err != nil {
			t.Fatal(err)
		}
	}
	var ch *store.DeviceChange
	err := s.UpdateDevices(ctx, []string{"dev1"}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		next := *prev
		next.Status = store.StatusRevoked
		ch = &store.DeviceChange{Device: &next, Revoke: &store.Revocation{RevokedAt: t0, Reason: "stolen"},
			Audit: []*store.AuditRecord{audit("device.revoke", id)}}
		return ch, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, ch.Revoked); diff != "" {
		t.Errorf("revoked (-want, +got):\n%s", diff)
	}
	st, err := s.Stats(ctx)
	if err != nil || st.Revocations != n || st.Certificates != n || st.Devices[store.StatusRevoked] != 1 {
		t.Errorf("stats = %+v, %v", st, err)
	}
}
