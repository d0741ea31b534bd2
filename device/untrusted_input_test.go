package device_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/device/cache"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// TestBeginAnswerWithBadPCRIsRefused: a begin answer asking for PCR -9 (a
// server bug, or a rewrite on an MQTT broker) is refused before it reaches
// the TPM, whose PCR selection encoder would panic on it.
func TestBeginAnswerWithBadPCRIsRefused(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	s := newServer(t, ca, nil, mfr, 1, nil)
	hs := httptest.NewUnstartedServer(rewriting(s.handler, api.PathBegin, func(br *api.BeginResponse) { br.PCRs = []int{-9} }))
	hs.TLS = s.tlsConfig(t)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	s2 := *s
	s2.url = hs.URL
	a := newAgent(t, &s2, tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("agent panicked on server input: %v", r)
		}
	}()
	_, err := a.Enroll(context.Background(), once)
	if err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("Enroll = %v, want the answer refused for its PCR index", err)
	}
}

// fakePush is a transport whose server is always busy for an hour and that
// can push bundles.
type fakePush struct {
	begins atomic.Int32
	pushes chan string
}

func (f *fakePush) Begin(context.Context, string, *api.BeginRequest) (*api.BeginResponse, error) {
	f.begins.Add(1)
	return nil, &device.TransientError{Err: &api.Error{Code: api.CodeBusy, Message: "busy"}, RetryAfter: time.Hour}
}
func (f *fakePush) Finish(context.Context, string, *api.FinishRequest, device.SealKeyFunc) (*api.FinishResponse, error) {
	panic("unreached")
}
func (f *fakePush) Whoami(context.Context, string) (*api.WhoamiResponse, error) { panic("unreached") }
func (f *fakePush) Close() error                                                { return nil }
func (f *fakePush) Listen(ctx context.Context)                                  { <-ctx.Done() }
func (f *fakePush) Pushes() <-chan string                                       { return f.pushes }

// TestPushKeepsRetryAfterWait: pushed messages do not end a Retry-After
// wait: a config published while the server sheds load must not send its
// retrying devices at it at once.
func TestPushKeepsRetryAfterWait(t *testing.T) {
	tpmDir, _ := newTPM(t)
	ca := newCA(t)
	sim, err := tpmsim.OpenState(tpmDir)
	if err != nil {
		t.Fatal(err)
	}
	fp := &fakePush{pushes: make(chan string, 1)}
	a, err := device.New(context.Background(), device.Config{
		Roots: ca.RootPool(), TPM: sim, CachePath: filepath.Join(t.TempDir(), "agent.db"),
		Logger:    slog.New(slog.DiscardHandler),
		Transport: func(device.CertificateSource) (device.Transport, error) { return fp, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	log, stop := runAgent(t, a, device.RunOptions{})
	log.waitFor(t, 10*time.Second, func(s device.Status) bool { return s.Phase == device.PhaseRetrying })
	for i := 0; i < 5; i++ {
		fp.pushes <- "not-a-bundle"
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	if n := fp.begins.Load(); n > 1 {
		t.Errorf("server asked to wait 1h (Retry-After), yet 5 garbage pushes caused %d begins in 0.5s", n)
	}
}

func (s *server) tlsConfig(t *testing.T) *tls.Config {
	cert, err := s.ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{*cert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: s.ca.RootPool()}
}

// TestBadBeginAnswerIsNotKept: an agent that got a bad begin answer keeps
// nothing of it, so after a restart it enrolls with the honest server.
func TestBadBeginAnswerIsNotKept(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	s := newServer(t, ca, nil, mfr, 1, nil)
	hs := httptest.NewUnstartedServer(rewriting(s.handler, api.PathBegin, func(br *api.BeginResponse) { br.PCRs = []int{-9} }))
	hs.TLS = s.tlsConfig(t)
	hs.StartTLS()
	t.Cleanup(hs.Close)
	bad := *s
	bad.url = hs.URL
	cachePath := filepath.Join(t.TempDir(), "agent.db")
	func() {
		a := newAgent(t, &bad, tpmDir, cachePath)
		defer a.Close()
		defer func() { recover() }()
		a.Enroll(context.Background(), once)
	}()
	// "Restart" against the honest server.
	a := newAgent(t, s, tpmDir, cachePath)
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("restarted agent panicked on the cached session: %v", r)
		}
	}()
	if _, err := a.Enroll(context.Background(), once); err != nil {
		t.Errorf("after a restart, Enroll = %v", err)
	}
}

// TestEmptyCachedChain: a cached enrollment without a certificate (a
// corrupt record) makes the device not ready, without a panic.
func TestEmptyCachedChain(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	s := newServer(t, ca, nil, mfr, 1, nil)
	cachePath := filepath.Join(t.TempDir(), "agent.db")
	a := newAgent(t, s, tpmDir, cachePath)
	a.Close()
	c, _, err := cache.Open(cachePath)
	if err != nil {
		t.Fatal(err)
	}
	c.PutEnrollment(&cache.Enrollment{DeviceID: "x", CertificateChain: [][]byte{}})
	c.Close()
	a = newAgent(t, s, tpmDir, cachePath)
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("CachedState panicked on an empty cached chain: %v", r)
		}
	}()
	if st := a.CachedState(time.Now()); st.Ready || st.Leaf != nil {
		t.Errorf("state %+v, want not ready", st)
	}
	if _, err := a.TLSCertificate(); err == nil {
		t.Error("TLSCertificate of an empty cached chain succeeded")
	}
}

// runWithClock runs an agent whose clock is skew away from its server's,
// with o, and returns the server, the agent's status log and a stop.
func runWithClock(t *testing.T, skew time.Duration, o device.RunOptions) (*server, *statusLog, func()) {
	t.Helper()
	tpmDir, mfr := newTPM(t)
	s := newServer(t, newCA(t), nil, mfr, 1, nil)
	sim, err := tpmsim.OpenState(tpmDir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := device.New(context.Background(), device.Config{
		ServerURL: s.url, Roots: s.ca.RootPool(), TPM: sim, CachePath: filepath.Join(t.TempDir(), "agent.db"),
		RequestTimeout: 10 * time.Second, Logger: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return time.Now().Add(skew) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	log, stop := runAgent(t, a, o)
	return s, log, stop
}

// TestClockAheadDoesNotRenewBackToBack: with the device's clock 20 h ahead
// (24 h certificates), a certificate just received is past its renewal
// time by the device's clock; it is scheduled from its arrival instead.
func TestClockAheadDoesNotRenewBackToBack(t *testing.T) {
	s, log, stop := runWithClock(t, 20*time.Hour, device.RunOptions{})
	log.waitFor(t, 10*time.Second, func(s device.Status) bool { return s.Ready })
	time.Sleep(time.Second)
	stop()
	if n := s.begins.Load(); n != 1 {
		t.Errorf("%d enrollments in a second: renewals follow each other", n)
	}
}

// TestClockBehindEnrolls: with the device's clock 2 minutes behind the
// server's, the certificate just issued is accepted (within
// pki.BundleClockSkew) and the device is ready.
func TestClockBehindEnrolls(t *testing.T) {
	s, log, stop := runWithClock(t, -2*time.Minute, device.RunOptions{})
	st := log.waitFor(t, 10*time.Second, func(s device.Status) bool { return s.Ready || s.LastError != "" })
	stop()
	if !st.Ready {
		t.Errorf("phase %s, error %s: want ready", st.Phase, st.LastError)
	}
	if n := s.begins.Load(); n != 1 {
		t.Errorf("%d enrollments, want 1", n)
	}
}

// TestLocalFailureIsRetried: a failure of the device's own (here, its
// clock too far behind to accept the certificate the server issued) is
// retried with backoff, not taken for an operator's refusal and its hour.
func TestLocalFailureIsRetried(t *testing.T) {
	s, log, stop := runWithClock(t, -10*time.Minute, device.RunOptions{Retry: device.RetryPolicy{Base: time.Millisecond, Max: 10 * time.Millisecond}})
	st := log.waitFor(t, 10*time.Second, func(s device.Status) bool { return s.LastError != "" })
	log.waitFor(t, 10*time.Second, func(device.Status) bool { return s.begins.Load() >= 2 })
	stop()
	if st.Phase != device.PhaseRetrying || st.Ready {
		t.Errorf("phase %s (code %s, %s), want retrying", st.Phase, st.LastErrorCode, st.LastError)
	}
}
