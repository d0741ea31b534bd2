package enrollserver_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
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
//
// Two variants: sessions=durable stores the session at begin (an fsynced
// commit, store.Open's default), sessions=memory keeps it in memory
// (store.Options.MemorySessions, enrolld's default), so that only finish
// commits. Besides ns/op (wall time, mostly the fsyncs of a lone writer),
// cpu-ns/op is the process's CPU time (user + system) per enrollment,
// what the server's capacity depends on.
//
//	go test -run x -bench 'Enrollment$' -benchtime 2000x -count 3 ./enrollserver
func BenchmarkEnrollment(b *testing.B) {
	b.Run("sessions=durable", func(b *testing.B) { benchEnrollment(b, nil, 0, false) })
	b.Run("sessions=memory", func(b *testing.B) { benchEnrollment(b, nil, 0, true) })
}

// BenchmarkMeasuredBootEnrollment is BenchmarkEnrollment in a group that
// enforces measured boot and secure boot: every finish also carries a
// realistic firmware event log (a shim + GRUB boot of 301 events over PCRs
// 0-9 and 14, about 30 KiB, as the simulated TPM measured it), which the
// server parses, replays against the quoted PCRs and judges against the
// group's 100 approved firmware references, read from the store.
//
// Two variants: replay-cache=off replays every log (a fleet of devices that
// all rebooted since their last enrollment: the worst case), and
// replay-cache=on (the default) recognises a log and PCR values verified
// before, as when a device renews without rebooting.
func BenchmarkMeasuredBootEnrollment(b *testing.B) {
	opts := elt.Realistic()
	opts.FirmwareVersion = "Acme Gateway 1.4.2"
	fw := elt.New(opts)
	b.Run("replay-cache=off", func(b *testing.B) { benchEnrollment(b, fw, -1, false) })
	b.Run("replay-cache=on", func(b *testing.B) { benchEnrollment(b, fw, 0, false) })
}

// benchEnrollment runs the benchmark; fw (nil: none) is the firmware the
// device boots and its group enforces, replayCache the server's
// ReplayCacheSize, memSessions the store's MemorySessions.
func benchEnrollment(b *testing.B, fw *elt.Log, replayCache int, memSessions bool) {
	if sim == nil {
		b.Fatalf("the TPM simulator is required: %v", simErr)
	}
	if fw != nil {
		bootFirmware(b, fw)
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
		opts := store.DefaultOptions()
		opts.MemorySessions = memSessions
		st, err := store.Open(filepath.Join(dir, fmt.Sprintf("bench-%d.db", i)), opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		srv, err := enrollserver.New(enrollserver.Config{
			Store: st, CA: ca, ManufacturerRoots: roots,
			Bundles:         enrollserver.StaticBundle{Version: 1, Config: json.RawMessage(`{"k":"v"}`)},
			Rand:            rand.NewChaCha8([32]byte{1, 2, 3}),
			ReplayCacheSize: replayCache,
		})
		if err != nil {
			b.Fatal(err)
		}
		if fw != nil {
			ctx := context.Background()
			if _, err := srv.SetGroup(ctx, opCall, "default", &api.GroupSpec{Admission: api.AdmissionAuto,
				MeasuredBoot: api.MeasuredBootEnforce, RequireSecureBoot: true}); err != nil {
				b.Fatal(err)
			}
			req := &api.FirmwareAddRequest{Group: "default"}
			for j := range 99 {
				req.References = append(req.References, api.FirmwareDigest{Digest: fmt.Sprintf("%064x", j+1), Name: fmt.Sprintf("other firmware %d", j)})
			}
			req.References = append(req.References, api.FirmwareDigest{Digest: firmwareDigest(b, fw), Name: "this firmware"})
			if _, err := srv.AddFirmware(ctx, opCall, req); err != nil {
				b.Fatal(err)
			}
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
		if fw != nil {
			finishes[i].EventLog = fw.Bytes()
		}
	}

	b.ReportAllocs()
	b.ResetTimer()
	var srv *enrollserver.Server
	var untimedCPU time.Duration // CPU spent while the timer is stopped
	cpu0 := processCPU(b)
	for i := 0; i < b.N; i++ {
		if i%benchPool == 0 {
			b.StopTimer()
			c := processCPU(b)
			srv = newServer(i/benchPool + 1)
			untimedCPU += processCPU(b) - c
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
		if fw != nil && i == 0 {
			b.StopTimer()
			c := processCPU(b)
			if rec, err := srv.GetDevice(ctx, br.DeviceID); err != nil || rec.Firmware == nil || rec.Firmware.Verdict != api.FirmwareApproved {
				b.Fatalf("measured boot not approved: %+v, %v", rec, err)
			}
			untimedCPU += processCPU(b) - c
			b.StartTimer()
		}
	}
	b.StopTimer()
	cpu := processCPU(b) - cpu0 - untimedCPU
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "enrollments/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// processCPU is the CPU time (user + system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
