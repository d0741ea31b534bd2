package device_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// statusLog collects the statuses Run reports.
type statusLog struct {
	mu  sync.Mutex
	all []device.Status
	ch  chan device.Status
}

func newStatusLog() *statusLog { return &statusLog{ch: make(chan device.Status, 1000)} }

func (l *statusLog) add(s device.Status) {
	l.mu.Lock()
	l.all = append(l.all, s)
	l.mu.Unlock()
	select {
	case l.ch <- s:
	default:
	}
}

// waitFor returns the first status satisfying ok, failing after limit.
func (l *statusLog) waitFor(t *testing.T, limit time.Duration, ok func(device.Status) bool) device.Status {
	t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case s := <-l.ch:
			if ok(s) {
				return s
			}
		case <-deadline:
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("no matching status within %s; saw %+v", limit, l.all)
		}
	}
}

func runAgent(t *testing.T, a *device.Agent, o device.RunOptions) (*statusLog, func()) {
	t.Helper()
	log := newStatusLog()
	o.OnStatus = log.add
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, o) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return log, stop
}

// TestRunReadyFromCacheOffline: with a valid cache the device is ready at
// once with the server unreachable.
func TestRunReadyFromCacheOffline(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	cachePath := filepath.Join(t.TempDir(), "agent.db")
	a := newAgent(t, newServer(t, ca, nil, mfr, 1, nil), tpmDir, cachePath)
	if _, err := a.Enroll(context.Background(), once); err != nil {
		t.Fatal(err)
	}
	a.Close()

	offline := &server{url: "https://127.0.0.1:1", ca: ca, mfr: mfr}
	a = newAgent(t, offline, tpmDir, cachePath)
	log, stop := runAgent(t, a, device.RunOptions{})
	s := log.waitFor(t, 10*time.Second, func(s device.Status) bool { return s.Ready })
	if s.Phase != device.PhaseReady || s.Attempts != 0 || s.NextRenewal.IsZero() {
		t.Errorf("status = %+v, want ready with no attempt and a renewal scheduled", s)
	}
	stop()
}

// TestRunEnrollsWhenServerComesUp: started with the server down, the agent
// retries with backoff and becomes ready once it is up.
func TestRunEnrollsWhenServerComesUp(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	// Reserve an address, start the agent against it while nothing
	// listens, then serve there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := newServer(t, ca, nil, mfr, 1, nil) // for its handler and CA
	a := newAgent(t, &server{url: "https://" + addr, ca: ca, mfr: mfr}, tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	log, _ := runAgent(t, a, device.RunOptions{Retry: device.RetryPolicy{Base: 50 * time.Millisecond, Max: 200 * time.Millisecond}})
	log.waitFor(t, 10*time.Second, func(s device.Status) bool { return s.Phase == device.PhaseRetrying && s.LastErrorCode == "network" })

	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv.handler)
	ts.Listener.Close()
	ts.Listener = ln
	cert, err := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	ts.StartTLS()
	defer ts.Close()
	s := log.waitFor(t, 20*time.Second, func(s device.Status) bool { return s.Ready })
	if s.Attempts < 2 {
		t.Errorf("attempts = %d, want retries before the server came up", s.Attempts)
	}
}

// TestRunRenews: at RenewAt of its lifetime the agent re-attests (a new
// begin, a new certificate) and stays ready throughout.
func TestRunRenews(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	s := newServer(t, ca, nil, mfr, 1, nil, func(c *enrollserver.Config) { c.LeafLifetime = pki.MinLeafLifetime })
	a := newAgent(t, s, tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	// The shortest certificate is 5 minutes: renew after 0.2% of it.
	log, _ := runAgent(t, a, device.RunOptions{RenewAt: 0.002, RenewJitter: 0})
	first := log.waitFor(t, 20*time.Second, func(s device.Status) bool { return s.Ready })
	second := log.waitFor(t, 20*time.Second, func(st device.Status) bool {
		return st.Ready && st.CertSerial != "" && st.CertSerial != first.CertSerial
	})
	if n := s.begins.Load(); n < 2 {
		t.Errorf("%d begins, want a re-attestation per renewal", n)
	}
	if !second.ReadySince.Equal(first.ReadySince) {
		t.Errorf("readiness was interrupted by renewal: %v then %v", first.ReadySince, second.ReadySince)
	}
}

// TestRunRefusedDoesNotHammer: a permanent refusal is asked again only
// after the permanent backoff.
func TestRunRefusedDoesNotHammer(t *testing.T) {
	tpmDir, _ := newTPM(t)
	_, other := newTPM(t) // a vendor the server trusts, but not ours
	s := newServer(t, newCA(t), nil, other, 1, nil)
	a := newAgent(t, s, tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	log, _ := runAgent(t, a, device.RunOptions{PermanentBackoff: time.Hour, Retry: device.RetryPolicy{Base: time.Millisecond, Max: time.Millisecond}})
	st := log.waitFor(t, 10*time.Second, func(s device.Status) bool { return s.Phase == device.PhaseRefused })
	if st.LastErrorCode != "ek_untrusted" || st.Ready {
		t.Errorf("status = %+v", st)
	}
	time.Sleep(300 * time.Millisecond)
	if n := s.begins.Load(); n != 1 {
		t.Errorf("%d begins after a permanent refusal, want 1", n)
	}
}

// BenchmarkReadyFromCache measures boot to ready with a valid cache and no
// network: agent start (TPM session, cache open and check, AK and key blobs
// loaded) and verification of the cached chain and bundle. The software
// TPM's own power-on is outside the timer, as firmware's would be.
func BenchmarkReadyFromCache(b *testing.B) {
	mfr, err := tpmsim.NewManufacturer("bench vendor")
	if err != nil {
		b.Fatal(err)
	}
	tpmDir := filepath.Join(b.TempDir(), "tpm")
	if _, err := tpmsim.ManufactureState(tpmDir, mfr); err != nil {
		b.Fatal(err)
	}
	ca, err := pki.LoadOrCreateCA(filepath.Join(b.TempDir(), "ca"), nil)
	if err != nil {
		b.Fatal(err)
	}
	cachePath := filepath.Join(b.TempDir(), "agent.db")
	open := func(url string) *device.Agent {
		sim, err := tpmsim.OpenState(tpmDir)
		if err != nil {
			b.Fatal(err)
		}
		a, err := device.New(context.Background(), device.Config{ServerURL: url, Roots: ca.RootPool(), TPM: sim,
			CachePath: cachePath, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		return a
	}
	srv := benchServer(b, ca, mfr)
	a := open(srv)
	if _, err := a.Enroll(context.Background(), once); err != nil {
		b.Fatal(err)
	}
	a.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		sim, err := tpmsim.OpenState(tpmDir)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		a, err := device.New(context.Background(), device.Config{ServerURL: "https://127.0.0.1:1", Roots: ca.RootPool(), TPM: sim,
			CachePath: cachePath, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		if st := a.CachedState(time.Now()); !st.Ready {
			b.Fatalf("not ready: %s", st.Reason)
		}
		b.StopTimer()
		a.Close()
		b.StartTimer()
	}
}

var _ = http.StatusOK

// TestRunRefresh: a refresh (SIGHUP in the command) re-attests at once
// while ready, and the device receives the server's current bundle.
func TestRunRefresh(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	s := newServer(t, ca, nil, mfr, 1, nil)
	a := newAgent(t, s, tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	refresh := make(chan struct{}, 1)
	log, _ := runAgent(t, a, device.RunOptions{Refresh: refresh})
	first := log.waitFor(t, 20*time.Second, func(s device.Status) bool { return s.Ready })
	refresh <- struct{}{}
	second := log.waitFor(t, 20*time.Second, func(st device.Status) bool {
		return st.Ready && st.CertSerial != first.CertSerial
	})
	if n := s.begins.Load(); n != 2 {
		t.Errorf("%d begins, want one re-attestation for the refresh", n)
	}
	if second.Attempts != 2 {
		t.Errorf("attempts = %d, want 2", second.Attempts)
	}
}
