package enrollserver_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// benchPool is how many enrollments' TPM evidence is made before timing.
// Each server instance accepts each session once, so the timed loop moves
// to a fresh server (same seeded randomness, fresh store) every benchPool
// enrollments, outside the timer.
const benchPool = 128

// BenchmarkEnrollment measures the server's work for one full enrollment:
// Begin (EK certificate chain, AK checks, MakeCredential, session write)
// and Finish (activation proof, quote, key certification, CSR, issuance,
// bundle signing, the enrollment transaction with fsync). Device-side TPM
// work is done before the timer starts: the server's randomness is seeded,
// so a fresh server replays the same session IDs, nonces and activation
// secrets, and the precomputed answers stay valid.
func BenchmarkEnrollment(b *testing.B) {
	if sim == nil {
		b.Fatalf("the TPM simulator is required: %v", simErr)
	}
	dir := b.TempDir()
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "ca"), nil)
	if err != nil {
		b.Fatal(err)
	}
	mfr, err := tpmsim.NewManufacturer("bench TPM vendor")
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(mfr.Certificate)
	d := newDevice(b, mfr)

	newServer := func(i int) *enrollserver.Server {
		st, err := store.Open(filepath.Join(dir, fmt.Sprintf("bench-%d.db", i)), nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		srv, err := enrollserver.New(enrollserver.Config{
			Store: st, CA: ca, ManufacturerRoots: roots,
			Bundles: enrollserver.StaticBundle{Version: 1, Config: json.RawMessage(`{"k":"v"}`)},
			Rand:    rand.NewChaCha8([32]byte{1, 2, 3}),
		})
		if err != nil {
			b.Fatal(err)
		}
		return srv
	}

	// Prepare the device's answers against a first server.
	ctx := context.Background()
	begin := d.begin()
	prep := newServer(0)
	finishes := make([]*api.FinishRequest, benchPool)
	for i := range finishes {
		br, err := prep.Begin(ctx, "bench", begin)
		if err != nil {
			b.Fatal(err)
		}
		finishes[i] = d.finish(br, br.Nonce)
	}

	b.ReportAllocs()
	b.ResetTimer()
	var srv *enrollserver.Server
	for i := 0; i < b.N; i++ {
		if i%benchPool == 0 {
			b.StopTimer()
			srv = newServer(i/benchPool + 1)
			b.StartTimer()
		}
		br, err := srv.Begin(ctx, "bench", begin)
		if err != nil {
			b.Fatal(err)
		}
		f := finishes[i%benchPool]
		if br.SessionID != f.SessionID {
			b.Fatalf("server randomness diverged: session %s, prepared %s", br.SessionID, f.SessionID)
		}
		if _, err := srv.Finish(ctx, "bench", f); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enrollments/s")
}
