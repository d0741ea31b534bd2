package store_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// TestOldestImports: oldest first, imports started at the same time in ID
// order (both stores scan in ID order, so the conformance suite cannot
// tell), at most limit of them.
func TestOldestImports(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ids := func(bs []*store.ImportBatch) []string {
		out := []string{}
		for _, b := range bs {
			out = append(out, b.ID)
		}
		return out
	}
	in := func() []*store.ImportBatch {
		return []*store.ImportBatch{{ID: "z", CreatedAt: t0}, {ID: "a", CreatedAt: t0.Add(time.Second)}, {ID: "y", CreatedAt: t0}, {ID: "b", CreatedAt: t0.Add(-time.Second)}}
	}
	for _, tt := range []struct {
		limit int
		want  []string
	}{
		{10, []string{"b", "y", "z", "a"}},
		{2, []string{"b", "y"}},
		{0, []string{}},
		{-1, []string{}},
	} {
		if diff := cmp.Diff(tt.want, ids(store.OldestImports(in(), tt.limit))); diff != "" {
			t.Errorf("limit %d (-want, +got):\n%s", tt.limit, diff)
		}
	}
}
