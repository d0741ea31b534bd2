package httpapi_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/enrollserver/enrollservertest"
	"github.com/edgeenroll/edgeenroll/enrollserver/httpapi"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/loadgen"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// overloadEnv is a real server core with its bbolt store behind real TLS
// on loopback, admitting through a controller the test configures, and
// simulated devices with real TPM evidence.
type overloadEnv struct {
	url    string
	ca     *pki.CA
	store  *store.Bolt
	ctrl   *admission.Controller
	ids    []*loadgen.Identity
	prover *loadgen.LocalProver
}

// devices is made once per test binary: the simulator is a process-wide
// singleton.
var devices struct {
	once   sync.Once
	mfr    *tpmsim.Manufacturer
	prover *loadgen.LocalProver
	ids    []*loadgen.Identity
	err    error
}

const overloadDevices = 40

func testDevices(t *testing.T) (*tpmsim.Manufacturer, *loadgen.LocalProver, []*loadgen.Identity) {
	t.Helper()
	devices.once.Do(func() {
		if devices.mfr, devices.err = tpmsim.NewManufacturer("overload test TPM vendor"); devices.err != nil {
			return
		}
		var p *loadgen.Prover
		if p, devices.err = loadgen.OpenProver(11, devices.mfr); devices.err != nil {
			return
		}
		devices.prover = &loadgen.LocalProver{P: p}
		devices.ids, devices.err = loadgen.CreateIdentities(context.Background(), devices.prover, []byte("overload test"), 0, overloadDevices, 1)
	})
	if errors.Is(devices.err, tpmsim.ErrCgoRequired) {
		t.Skip(devices.err)
	}
	if devices.err != nil {
		t.Fatal(devices.err)
	}
	return devices.mfr, devices.prover, devices.ids
}

func newOverloadEnv(t *testing.T, o admission.Options) *overloadEnv {
	t.Helper()
	mfr, prover, ids := testDevices(t)
	roots := x509.NewCertPool()
	roots.AddCert(mfr.Certificate)
	c := enrollservertest.New(t, enrollserver.Config{ManufacturerRoots: roots}, nil)
	srv, ca, st := c.Server, c.CA, c.Store
	ctrl, err := admission.New(&o)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(httpapi.NewHandler(srv, httpapi.Options{Admission: ctrl}))
	cert, err := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.RootPool()}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return &overloadEnv{url: ts.URL, ca: ca, store: st, ctrl: ctrl, ids: ids, prover: prover}
}

// client is an HTTPS client dialing from local address from (any of
// 127/8 on Linux: each test device is its own peer address), with an
// optional client certificate.
func (e *overloadEnv) client(from string, cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: e.ca.RootPool(), MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DialContext: d.DialContext, MaxIdleConnsPerHost: 1}}
}

// busyAnswer is one 429 a client saw.
type busyAnswer struct {
	retryAfter int // header
	body       api.Error
}

// post sends v and decodes a 200 into out. A non-200 comes back as
// *api.Error, wrapped in *device.TransientError with the Retry-After for
// 429 and 5xx; each 429 is also passed to busy.
func post(ctx context.Context, c *http.Client, url string, v, out any, busy func(busyAnswer)) error {
	b, _ := json.Marshal(v)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", api.ContentTypeJSON)
	resp, err := c.Do(req)
	if err != nil {
		return &device.TransientError{Err: err}
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return json.Unmarshal(raw, out)
	}
	var ae api.Error
	if err := json.Unmarshal(raw, &ae); err != nil {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, raw)
	}
	ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode == http.StatusTooManyRequests && busy != nil {
		busy(busyAnswer{retryAfter: ra, body: ae})
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 {
		return &device.TransientError{Err: &ae, RetryAfter: time.Duration(ra) * time.Second}
	}
	return &ae
}

// addrTransport is a device.Transport over one client.
type addrTransport struct {
	c    *http.Client
	url  string
	busy func(busyAnswer)
}

func (a *addrTransport) Begin(ctx context.Context, _ string, req *api.BeginRequest) (*api.BeginResponse, error) {
	var br api.BeginResponse
	return &br, post(ctx, a.c, a.url+api.PathBegin, req, &br, a.busy)
}

func (a *addrTransport) Finish(ctx context.Context, _ string, req *api.FinishRequest, _ device.SealKeyFunc) (*api.FinishResponse, error) {
	var fr api.FinishResponse
	return &fr, post(ctx, a.c, a.url+api.PathFinish, req, &fr, a.busy)
}

func (a *addrTransport) Whoami(context.Context, string) (*api.WhoamiResponse, error) {
	return nil, errors.New("not used")
}

func (a *addrTransport) Close() error { a.c.CloseIdleConnections(); return nil }

// deviceAddr is device i's loopback address.
func deviceAddr(i int) string { return fmt.Sprintf("127.0.1.%d", 1+i) }

// TestOverload floods a real server well past its slots and queue: the
// excess gets 429 busy with a Retry-After from the queue's drain time, a
// client flooding begins is held to its rate while the others proceed,
// and after the storm every device has enrolled exactly once.
func TestOverload(t *testing.T) {
	e := newOverloadEnv(t, admission.Options{Slots: 2, MaxQueue: 6, MaxWait: 10 * time.Second,
		AddressRate: 2, AddressBurst: 4})
	var mu sync.Mutex
	var busy []busyAnswer
	record := func(b busyAnswer) {
		mu.Lock()
		defer mu.Unlock()
		busy = append(busy, b)
	}

	// The flooder: one address sending valid begins back to back, never
	// waiting for Retry-After.
	ctx, stopFlood := context.WithCancel(context.Background())
	var floodOK, floodLimited, floodOther atomic.Int64
	var floodDone sync.WaitGroup
	floodDone.Add(1)
	go func() {
		defer floodDone.Done()
		c := e.client("127.0.2.1", nil)
		for ctx.Err() == nil {
			var br api.BeginResponse
			err := post(ctx, c, e.url+api.PathBegin, e.ids[0].BeginRequest(), &br, func(b busyAnswer) {
				if b.body.Message == "too many requests from this client; retry after the Retry-After delay" {
					floodLimited.Add(1)
				} else {
					floodOther.Add(1)
				}
			})
			if err == nil {
				floodOK.Add(1)
			}
		}
	}()

	// The fleet: every other device, all at once, each from its own
	// address, retrying as devices do (never before Retry-After).
	fleet := e.ids[1:]
	start := time.Now()
	rep, err := loadgen.Run(context.Background(), loadgen.Config{
		Identities: fleet, Prover: e.prover, TransportName: "https", Concurrency: len(fleet),
		Transport: func(id *loadgen.Identity) (device.Transport, error) {
			return &addrTransport{c: e.client(deviceAddr(id.Index), nil), url: e.url, busy: record}, nil
		},
		Roots: e.ca.RootPool(), Verify: true,
		Retry:        loadgen.RetryPolicy{Attempts: 30, Base: 50 * time.Millisecond, Max: time.Second},
		PhaseTimeout: 2 * time.Minute,
	})
	elapsed := time.Since(start)
	stopFlood()
	floodDone.Wait()
	if err != nil {
		t.Fatal(err)
	}
	ph := rep.Phases[0]
	t.Logf("%d devices in %s: %d enrolled, errors %v, retries %+v, time to ready %+v", len(fleet), elapsed.Round(time.Millisecond),
		ph.Succeeded, ph.Errors, ph.Retries, ph.TimeToReady)
	t.Logf("flooder: %d begins served, %d rate limited, %d refused busy otherwise", floodOK.Load(), floodLimited.Load(), floodOther.Load())

	// Overload was answered 429 busy with a sensible Retry-After.
	if ph.Errors[string(api.CodeBusy)] == 0 || len(busy) == 0 {
		t.Errorf("no device was told busy (errors %v): the test did not overload the server", ph.Errors)
	}
	for _, b := range busy {
		if b.body.Code != api.CodeBusy || b.retryAfter < 1 || b.retryAfter > 60 || b.retryAfter != b.body.RetryAfterSeconds {
			t.Errorf("429 with Retry-After %d, body %+v", b.retryAfter, b.body)
			break
		}
	}
	// Every device converged, with no failure other than busy.
	if ph.Succeeded != len(fleet) || ph.Failed != 0 {
		t.Errorf("%d of %d devices enrolled, %d failed (errors %v)", ph.Succeeded, len(fleet), ph.Failed, ph.Errors)
	}
	for code := range ph.Errors {
		if code != string(api.CodeBusy) {
			t.Errorf("devices saw %s errors: %v", code, ph.Errors)
		}
	}
	// The flooder got its bucket's worth (burst 4 + 2/s) and no more.
	if max := int64(4 + 2*elapsed.Seconds() + 2); floodOK.Load() > max || floodLimited.Load() == 0 {
		t.Errorf("flooder: %d begins served (at most %d allowed), %d rate limited", floodOK.Load(), max, floodLimited.Load())
	}
	if s := e.ctrl.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Errorf("admission after the storm: %+v", s)
	}

	// One record per device, each enrolled once: no duplicates. (The
	// flooder's device only ever began.)
	seen := map[string]bool{}
	err = e.store.Devices(context.Background(), func(d *store.Device) bool {
		if seen[d.ID] {
			t.Errorf("device %s listed twice", d.ID)
		}
		seen[d.ID] = true
		if d.ID != e.ids[0].DeviceID && (d.Status != store.StatusEnrolled || d.Enrollments != 1) {
			t.Errorf("device %s: status %s, %d enrollments; want enrolled once", d.ID, d.Status, d.Enrollments)
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	delete(seen, e.ids[0].DeviceID)
	if len(seen) != len(fleet) {
		t.Errorf("store holds %d fleet devices, want %d", len(seen), len(fleet))
	}
}

// TestOverloadRenewalsFirst: with the queue full of first enrollments,
// renewals from devices presenting their certificate over mTLS are
// admitted before them. The one slot is held until everything is queued,
// so the order is the controller's, not the scheduler's.
func TestOverloadRenewalsFirst(t *testing.T) {
	e := newOverloadEnv(t, admission.Options{Slots: 1, MaxQueue: 64, MaxWait: time.Minute})
	const renewals = 3
	enrollers := e.ids[renewals:]

	// Hold the only slot.
	tk, err := e.ctrl.Enter(admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyDevice, Key: "blocker"})
	if err != nil {
		t.Fatal(err)
	}
	blocker, err := tk.Wait(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitQueued := func(n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for e.ctrl.Stats().Queued < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d requests queued, want %d: %+v", e.ctrl.Stats().Queued, n, e.ctrl.Stats())
			}
			time.Sleep(time.Millisecond)
		}
	}

	var mu sync.Mutex
	var done []string // completion order
	finished := func(name string, err error) {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		mu.Lock()
		defer mu.Unlock()
		done = append(done, name)
	}
	var wg sync.WaitGroup
	for i, id := range enrollers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var br api.BeginResponse
			finished("enroll", post(context.Background(), e.client(deviceAddr(i), nil), e.url+api.PathBegin, id.BeginRequest(), &br, nil))
		}()
	}
	waitQueued(len(enrollers))
	for _, id := range e.ids[:renewals] {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		iss, err := e.ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: id.DeviceID, PublicKey: key.Public(), Lifetime: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		cert := &tls.Certificate{PrivateKey: key, Leaf: iss.Leaf}
		for _, c := range iss.Chain {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var br api.BeginResponse
			finished("renew", post(context.Background(), e.client("127.0.3.1", cert), e.url+api.PathBegin, id.BeginRequest(), &br, nil))
		}()
	}
	waitQueued(len(enrollers) + renewals)
	blocker.Release()
	wg.Wait()
	// The renewals, queued last, were served first. (Completion is seen
	// by the clients: a response may reach its goroutine a moment after
	// the next request finished, so one slip is allowed.)
	var positions []int
	for i, name := range done {
		if name == "renew" {
			positions = append(positions, i)
		}
	}
	if len(positions) != renewals || positions[renewals-1] > renewals {
		t.Errorf("renewals completed at positions %v of %d, want the first %d: before the %d enrollments queued ahead of them", positions, len(done), renewals, len(enrollers))
	}
}
