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

// firmwareTests are the conformance cases of store.FirmwareStore and of the
// device records measured boot writes.
var firmwareTests = []struct {
	name string
	fn   func(t *testing.T, s store.Store)
}{
	{"FirmwareReferencesPerGroup", testFirmwareReferences},
	{"FirmwareUpdateErrorWritesNothing", testFirmwareUpdateError},
	{"FirmwareRetireKeepsRecord", testFirmwareRetire},
	{"RefusedDeviceRecordsFirmware", testRefusedDevice},
}

func digest(i int) string { return fmt.Sprintf("%064x", i) }

func ref(group string, i int) *store.FirmwareReference {
	return &store.FirmwareReference{Group: group, Digest: digest(i), Name: fmt.Sprintf("fw %d", i), CreatedAt: t0, CreatedBy: "operator/alice"}
}

func addRefs(t *testing.T, s store.Store, group string, refs ...*store.FirmwareReference) {
	t.Helper()
	if err := s.UpdateFirmware(context.Background(), group, func([]*store.FirmwareReference) (*store.FirmwarePlan, error) {
		return &store.FirmwarePlan{Put: refs, Audit: []*store.AuditRecord{audit("firmware.add", "group/"+group)}}, nil
	}); err != nil {
		t.Fatal(err)
	}
}

func listRefs(t *testing.T, s store.Store, group string, after store.FirmwareKey) []string {
	t.Helper()
	var out []string
	if err := s.FirmwareReferences(context.Background(), group, after, func(r *store.FirmwareReference) bool {
		out = append(out, r.Group+"/"+r.Digest[60:])
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func testFirmwareReferences(t *testing.T, s store.Store) {
	ctx := context.Background()
	addRefs(t, s, "g", ref("g", 2), ref("g", 1))
	// "g2" shares a prefix with "g": its references are not g's.
	addRefs(t, s, "g2", ref("g2", 3))
	if diff := cmp.Diff([]string{"g/0001", "g/0002"}, listRefs(t, s, "g", store.FirmwareKey{})); diff != "" {
		t.Errorf("group g (-want, +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"g/0001", "g/0002", "g2/0003"}, listRefs(t, s, "", store.FirmwareKey{})); diff != "" {
		t.Errorf("every group (-want, +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"g/0002", "g2/0003"}, listRefs(t, s, "", store.FirmwareKey{Group: "g", Digest: digest(1)})); diff != "" {
		t.Errorf("after g/1 (-want, +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string(nil), listRefs(t, s, "g", store.FirmwareKey{Group: "g", Digest: digest(2)})); diff != "" {
		t.Errorf("g after its last (-want, +got):\n%s", diff)
	}
	// The plan sees the group's current references, in digest order.
	var seen []string
	addRefs(t, s, "g") // nothing to put: the audit record still lands
	if err := s.UpdateFirmware(ctx, "g", func(cur []*store.FirmwareReference) (*store.FirmwarePlan, error) {
		for _, r := range cur {
			seen = append(seen, r.Name)
		}
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"fw 1", "fw 2"}, seen); diff != "" {
		t.Errorf("plan saw (-want, +got):\n%s", diff)
	}
	// A reference of another group is refused.
	if err := s.UpdateFirmware(ctx, "g", func([]*store.FirmwareReference) (*store.FirmwarePlan, error) {
		return &store.FirmwarePlan{Put: []*store.FirmwareReference{ref("h", 9)}}, nil
	}); err == nil {
		t.Error("UpdateFirmware of g wrote a reference of group h")
	}
	var got *store.FirmwareReference
	s.FirmwareReferences(ctx, "g", store.FirmwareKey{}, func(r *store.FirmwareReference) bool { got = r; return false })
	if diff := cmp.Diff(ref("g", 1), got); diff != "" {
		t.Errorf("round trip (-want, +got):\n%s", diff)
	}
	one, err := s.FirmwareReference(ctx, "g2", digest(3))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ref("g2", 3), one); diff != "" {
		t.Errorf("FirmwareReference (-want, +got):\n%s", diff)
	}
	for _, k := range []store.FirmwareKey{{Group: "g", Digest: digest(3)}, {Group: "g2", Digest: digest(1)}, {Group: "", Digest: digest(1)}} {
		if _, err := s.FirmwareReference(ctx, k.Group, k.Digest); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("FirmwareReference(%q, %s): %v, want ErrNotFound", k.Group, k.Digest[60:], err)
		}
	}
	if diff := cmp.Diff([]string{"firmware.add group/g", "firmware.add group/g2", "firmware.add group/g"}, actions(auditLog(t, s))); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
}

func testFirmwareUpdateError(t *testing.T, s store.Store) {
	boom := errors.New("boom")
	err := s.UpdateFirmware(context.Background(), "g", func([]*store.FirmwareReference) (*store.FirmwarePlan, error) {
		return &store.FirmwarePlan{Put: []*store.FirmwareReference{ref("g", 1)}, Audit: []*store.AuditRecord{audit("firmware.add", "group/g")}}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the plan's error", err)
	}
	if got := listRefs(t, s, "", store.FirmwareKey{}); len(got) != 0 {
		t.Errorf("references after a failed plan: %v", got)
	}
	if n := len(auditLog(t, s)); n != 0 {
		t.Errorf("%d audit records after a failed plan", n)
	}
}

func testFirmwareRetire(t *testing.T, s store.Store) {
	ctx := context.Background()
	addRefs(t, s, "g", ref("g", 1), ref("g", 2))
	if err := s.UpdateFirmware(ctx, "g", func(cur []*store.FirmwareReference) (*store.FirmwarePlan, error) {
		r := *cur[0]
		r.RetiredAt, r.RetiredBy, r.RetireReason = t0.Add(time.Hour), "operator/bob", "CVE"
		return &store.FirmwarePlan{Put: []*store.FirmwareReference{&r}, Audit: []*store.AuditRecord{audit("firmware.retire", "group/g")}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	var active, retired []string
	s.FirmwareReferences(ctx, "g", store.FirmwareKey{}, func(r *store.FirmwareReference) bool {
		if r.Active() {
			active = append(active, r.Name)
		} else {
			retired = append(retired, r.Name+" by "+r.RetiredBy+": "+r.RetireReason)
		}
		return true
	})
	if diff := cmp.Diff([]string{"fw 2"}, active); diff != "" {
		t.Errorf("active (-want, +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"fw 1 by operator/bob: CVE"}, retired); diff != "" {
		t.Errorf("retired (-want, +got):\n%s", diff)
	}
}

// testRefusedDevice: a device refused at its first enrollment gets a
// refused record with its measurement; PutPending (its group turned
// manual) makes it pending and keeps the measurement.
func testRefusedDevice(t *testing.T, s store.Store) {
	ctx := context.Background()
	fw := &store.FirmwareMeasurement{Digest: digest(7), Version: "1.0", SecureBoot: true, Verdict: "refused",
		Code: "firmware_not_approved", Reason: "not approved", MeasuredAt: t0}
	if err := s.UpdateDevices(ctx, []string{"r"}, func(id string, prev *store.Device) (*store.DeviceChange, error) {
		if prev != nil {
			return nil, fmt.Errorf("device %s exists", id)
		}
		return &store.DeviceChange{Device: &store.Device{ID: id, Status: store.StatusRefused, Group: "g", Firmware: fw},
			Audit: []*store.AuditRecord{audit("device.firmware", id)}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	var refused []string
	s.DevicesByStatus(ctx, store.StatusRefused, "", func(d *store.Device) bool { refused = append(refused, d.ID); return true })
	if diff := cmp.Diff([]string{"r"}, refused); diff != "" {
		t.Errorf("refused (-want, +got):\n%s", diff)
	}
	if st, err := s.Stats(ctx); err != nil || st.Devices[store.StatusRefused] != 1 {
		t.Errorf("stats = %+v, %v; want one refused device", st, err)
	}
	d, err := s.PutPending(ctx, pending("r", t0.Add(time.Hour)), 10, audit("device.pending", "r"))
	if err != nil {
		t.Fatalf("PutPending over a refused record: %v", err)
	}
	if d.Status != store.StatusPending {
		t.Errorf("status = %s, want pending", d.Status)
	}
	got, err := s.Device(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fw, got.Firmware); diff != "" {
		t.Errorf("firmware after PutPending (-want, +got):\n%s", diff)
	}
	refused = nil
	s.DevicesByStatus(ctx, store.StatusRefused, "", func(d *store.Device) bool { refused = append(refused, d.ID); return true })
	if len(refused) != 0 {
		t.Errorf("refused index still lists %v", refused)
	}
	if diff := cmp.Diff([]string{"device.firmware r", "device.pending r"}, actions(auditLog(t, s))); diff != "" {
		t.Errorf("log (-want, +got):\n%s", diff)
	}
}
