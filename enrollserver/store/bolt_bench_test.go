package store_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// BenchmarkBoltFinishEnrollment measures the store's share of one
// enrollment as enrolld makes it: a session begun in memory, then the
// finish's one fsynced transaction (device record, status index,
// certificate, device-certificate index, audit record), on a store that
// already holds 20,000 enrolled devices, with records the size the server
// writes (a two-certificate chain and a signed bundle: ~4.7 KB of JSON).
//
// writers=1 is a lone device (every finish commits alone); writers=16 is
// a busy server, 16 finishing goroutines per CPU (RunParallel; 32 on 2
// cores), where concurrent finishes share commits. Besides ns/op,
// cpu-ns/op is the process's CPU time (user + system, so the kernel's
// page writes and fsyncs are in it) per enrollment, writes/op the page
// writes (system calls, the meta page's included) and pages/op the 4 KiB
// data pages allocated and written (each commit also rewrites a meta
// page, not counted there).
//
//	go test -run x -bench BoltFinishEnrollment -benchtime 2000x -count 3 ./enrollserver/store
func BenchmarkBoltFinishEnrollment(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchBoltFinish(b, writers) })
	}
}

func benchBoltFinish(b *testing.B, writers int) {
	path := filepath.Join(b.TempDir(), "enroll.db")
	ctx := b.Context()
	now := time.Now()
	var s *store.Bolt
	enrollOne := func(i int64) error {
		id, dev := fmt.Sprintf("session-%016x", i), randomID()
		sess := &store.Session{ID: id, DeviceID: dev, EKPublic: make([]byte, 91), AKPublic: make([]byte, 90),
			Nonce: make([]byte, 32), ProofHash: make([]byte, 32), CreatedAt: now, ExpiresAt: now.Add(time.Minute)}
		if err := s.CreateSession(ctx, sess); err != nil {
			return err
		}
		cert := &store.IssuedCertificate{Serial: randomID()[:32], DeviceID: dev, SessionID: id, NotBefore: now, NotAfter: now.Add(24 * time.Hour)}
		_, err := s.FinishEnrollment(ctx, id, now, cert, func(prev *store.Device) (*store.Device, *store.AuditRecord, error) {
			return benchDevice(dev, id, cert, now), &store.AuditRecord{Time: now, ActorKind: "device", ActorName: dev,
				Action: "certificate.issue", Target: dev, Outcome: "success"}, nil
		})
		return err
	}
	// The fleet is written without fsync, then the store reopened as
	// enrolld opens it.
	open := func(opts *store.Options) {
		var err error
		if s, err = store.Open(path, opts); err != nil {
			b.Fatal(err)
		}
	}
	noSync := memOptions()
	noSync.NoSync = true
	open(noSync)
	const fleet = 20_000
	for i := range int64(fleet) {
		if err := enrollOne(-i - 1); err != nil {
			b.Fatal(err)
		}
	}
	s.Close()
	open(memOptions())
	b.Cleanup(func() { s.Close() })
	var n atomic.Int64
	cpu0 := cpuTime(b)
	tx0 := store.BoltTxStats(s)
	b.ReportAllocs()
	b.ResetTimer()
	b.SetParallelism(writers)
	// RunParallel runs writers×GOMAXPROCS goroutines; writers=1 must be
	// one, so that each finish commits alone.
	if writers == 1 {
		for i := range b.N {
			if err := enrollOne(int64(i)); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := enrollOne(n.Add(1)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	tx := store.BoltTxStats(s)
	d := tx.Sub(&tx0)
	b.ReportMetric(float64(d.GetWrite())/float64(b.N), "writes/op")
	b.ReportMetric(float64(d.GetPageCount())/float64(b.N), "pages/op")
	b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// benchDevice is a device record the size the server writes.
func benchDevice(id, sessionID string, cert *store.IssuedCertificate, now time.Time) *store.Device {
	return &store.Device{ID: id, Status: store.StatusEnrolled, Admission: store.AdmissionEKCertificate,
		EKPublic: make([]byte, 91), EKIssuer: "CN=Acme TPM EK CA,O=Acme", Group: "default",
		AKPublic: make([]byte, 90), KeyPublic: make([]byte, 91),
		CertificateChain: [][]byte{make([]byte, 620), make([]byte, 540)},
		CertSerial:       cert.Serial, CertNotAfter: cert.NotAfter,
		Bundle: strings.Repeat("eyJhbGciOiJFUzI1NiJ9", 95), BundleVersion: 1, // a compact JWS
		LastSessionID: sessionID, LastFinishDigest: make([]byte, 32),
		Enrollments: 1, FirstEnrolledAt: now, LastEnrolledAt: now}
}

func randomID() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
