package enrollserver_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// importRows is a factory batch of n devices by EK hash, with serials,
// groups and labels.
func importRows(n int) []api.ImportRow {
	rows := make([]api.ImportRow, n)
	for i := range rows {
		sum := sha256.Sum256([]byte(fmt.Sprint("ek", i)))
		rows[i] = api.ImportRow{Line: i + 2, DeviceID: hex.EncodeToString(sum[:]), Serial: fmt.Sprintf("SN-%08d", i),
			Group: fmt.Sprintf("line-%d", i%4), Labels: map[string]string{"batch": "2026-07", "site": "berlin"}}
	}
	return rows
}

// BenchmarkImport measures a 100,000-row factory import through the server
// as enrollctl drives it: open a staged import, stage 20 chunks of 5,000
// rows (validation, one fsynced bbolt transaction each), and commit (the
// merge against the stored pre-registrations and serial index, and the
// one fsynced transaction writing every row). "new" imports into an empty
// store; "reimport" commits the same rows again (a no-op).
func BenchmarkImport(b *testing.B) {
	const n = 100_000
	rows := importRows(n)
	ca, err := pki.LoadOrCreateCA(filepath.Join(b.TempDir(), "ca"), nil)
	if err != nil {
		b.Fatal(err)
	}
	call := &enrollserver.Call{CorrelationID: "bench", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "f", Role: pki.RoleFactory}}
	newServer := func(b *testing.B) *enrollserver.Server {
		st, err := store.Open(filepath.Join(b.TempDir(), "enroll.db"), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		srv, err := enrollserver.New(enrollserver.Config{Store: st, CA: ca, Bundles: enrollserver.StaticBundle{Version: 1, Config: json.RawMessage(`{}`)}})
		if err != nil {
			b.Fatal(err)
		}
		return srv
	}
	importAll := func(b *testing.B, srv *enrollserver.Server) *api.ImportResult {
		ctx := context.Background()
		start, err := srv.StartImport(ctx, call, &api.ImportStartRequest{Source: "bench.csv"})
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < n; i += api.MaxImportRowsPerChunk {
			if _, err := srv.StageImport(ctx, call, start.ImportID, &api.ImportRowsRequest{Rows: rows[i:min(n, i+api.MaxImportRowsPerChunk)]}); err != nil {
				b.Fatal(err)
			}
		}
		res, err := srv.CommitImport(ctx, call, start.ImportID, &api.ImportCommitRequest{})
		if err != nil {
			b.Fatal(err)
		}
		return res
	}
	b.Run("new", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			srv := newServer(b)
			b.StartTimer()
			if res := importAll(b, srv); res.Created != n {
				b.Fatalf("created %d", res.Created)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "rows/s")
	})
	b.Run("reimport", func(b *testing.B) {
		srv := newServer(b)
		importAll(b, srv)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if res := importAll(b, srv); res.Unchanged != n {
				b.Fatalf("unchanged %d", res.Unchanged)
			}
		}
		b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "rows/s")
	})
}
