package httpapi

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/pki"
)

func testShedder(t *testing.T, o admission.Options) *shedder {
	t.Helper()
	c, err := admission.New(&o)
	if err != nil {
		t.Fatal(err)
	}
	return &shedder{ctrl: c, td: pki.DefaultTrustDomain, now: time.Now}
}

// TestShedder: past its slots the server queues; past its queue it
// refuses at once with 429, busy and a Retry-After; the queued request
// runs when the slot frees.
func TestShedder(t *testing.T) {
	s := testShedder(t, admission.Options{Slots: 1, MaxQueue: 1, ServiceTime: 3 * time.Second, RetryJitter: -1})
	release, entered := make(chan struct{}), make(chan struct{}, 2)
	h := s.wrap(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
		w.WriteHeader(http.StatusOK)
	}, false)
	codes := make(chan int, 2)
	serve := func() {
		rec := httptest.NewRecorder()
		h(rec, httptest.NewRequest(http.MethodPost, api.PathBegin, nil))
		codes <- rec.Code
	}
	go serve()
	<-entered
	go serve()
	for s.ctrl.Stats().Queued != 1 {
		time.Sleep(time.Millisecond)
	}
	rec := httptest.NewRecorder()
	h(rec, httptest.NewRequest(http.MethodPost, api.PathBegin, nil))
	var ae api.Error
	json.Unmarshal(rec.Body.Bytes(), &ae)
	// Retry-After: 3 s × 1 queued / 1 slot.
	if rec.Code != http.StatusTooManyRequests || ae.Code != api.CodeBusy || rec.Header().Get("Retry-After") != "3" || ae.RetryAfterSeconds != 3 {
		t.Errorf("over the queue: HTTP %d, code %s, Retry-After %q, body %+v", rec.Code, ae.Code, rec.Header().Get("Retry-After"), ae)
	}
	close(release)
	for range 2 {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("admitted request: HTTP %d", c)
		}
	}
	if st := s.ctrl.Stats(); st.InFlight != 0 || st.Queued != 0 {
		t.Errorf("after: %+v", st)
	}
}

// TestShedderRateLimit: a client past its bucket gets 429 with the
// bucket's Retry-After while another address is served.
func TestShedderRateLimit(t *testing.T) {
	s := testShedder(t, admission.Options{AddressRate: 0.25, AddressBurst: 2})
	h := s.wrap(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }, false)
	from := func(addr string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, api.PathBegin, nil)
		r.RemoteAddr = addr
		rec := httptest.NewRecorder()
		h(rec, r)
		return rec
	}
	for i := range 2 {
		if rec := from("192.0.2.1:1000"); rec.Code != http.StatusOK {
			t.Fatalf("request %d: HTTP %d", i, rec.Code)
		}
	}
	rec := from("192.0.2.1:1001") // another port, same address
	ra, _ := strconv.Atoi(rec.Header().Get("Retry-After"))
	if rec.Code != http.StatusTooManyRequests || ra < 3 || ra > 6 || !strings.Contains(rec.Body.String(), "too many requests from this client") {
		t.Errorf("flooding client: HTTP %d, Retry-After %q, %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	if rec := from("192.0.2.2:1000"); rec.Code != http.StatusOK {
		t.Errorf("another client: HTTP %d", rec.Code)
	}
}

// TestClassify: class and client key come from the verified device
// certificate, else from the peer address.
func TestClassify(t *testing.T) {
	s := testShedder(t, admission.Options{})
	now := time.Now()
	s.now = func() time.Time { return now }
	devID := strings.Repeat("ab", 32)
	cert := func(cn string, uri string, nb, na time.Time) *tls.ConnectionState {
		u, _ := url.Parse(uri)
		leaf := &x509.Certificate{Subject: pkix.Name{CommonName: cn}, URIs: []*url.URL{u}, NotBefore: nb, NotAfter: na}
		return &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}
	}
	devURI := pki.DeviceURI(pki.DefaultTrustDomain, devID).String()
	for _, tc := range []struct {
		name      string
		tls       *tls.ConnectionState
		continues bool
		want      admission.Request
	}{
		{"no certificate", &tls.ConnectionState{}, false,
			admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyAddress, Key: "192.0.2.7"}},
		{"finish without certificate", nil, true,
			admission.Request{Class: admission.ClassEnroll, Continues: true, KeyKind: admission.KeyAddress, Key: "192.0.2.7"}},
		{"renewal", cert(devID, devURI, now.Add(-time.Hour), now.Add(5*time.Hour)), false,
			admission.Request{Class: admission.ClassRenew, KeyKind: admission.KeyDevice, Key: devID}},
		{"renewal near expiry", cert(devID, devURI, now.Add(-50*time.Hour), now.Add(5*time.Hour)), true,
			admission.Request{Class: admission.ClassRenewUrgent, Continues: true, KeyKind: admission.KeyDevice, Key: devID}},
		{"not a device certificate", cert("operator", "spiffe://"+pki.DefaultTrustDomain+"/operator/alice", now.Add(-time.Hour), now.Add(time.Hour)), false,
			admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyAddress, Key: "192.0.2.7"}},
		{"another trust domain", cert(devID, pki.DeviceURI("other.example", devID).String(), now.Add(-time.Hour), now.Add(time.Hour)), false,
			admission.Request{Class: admission.ClassEnroll, KeyKind: admission.KeyAddress, Key: "192.0.2.7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, api.PathBegin, nil)
			r.RemoteAddr, r.TLS = "192.0.2.7:4711", tc.tls
			if got := s.classify(r, tc.continues); got != tc.want {
				t.Errorf("classify = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestAddressKey: an IPv6 client is limited by its /64, not per address
// (a host holds a whole /64); an IPv4 one by its address.
func TestAddressKey(t *testing.T) {
	for remote, want := range map[string]string{
		"192.0.2.7:4431":                       "192.0.2.7",
		"[::ffff:192.0.2.7]:4431":              "192.0.2.7",
		"[2001:db8:1:2:aaaa::1]:4431":          "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff:ffff:ffff:ffff]:1": "2001:db8:1:2::/64",
		"[2001:db8:1:3::1]:4431":               "2001:db8:1:3::/64",
		"not an address":                       "not an address",
	} {
		if got := addressKey(remote); got != want {
			t.Errorf("addressKey(%q) = %q, want %q", remote, got, want)
		}
	}
}
