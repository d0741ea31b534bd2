package device_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/device/cache"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/enrollservertest"
	"github.com/edgeenroll/edgeenroll/enrollserver/httpapi"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// The agent owns its TPM and closes it; each test manufactures a simulated
// TPM in a state directory (EK certificate from a test vendor) and opens it
// for the agent. One simulator per process at a time: tests are sequential.

// server is a real enrollment server on real TLS. rewrite, if set, edits
// finish responses on their way out: a hostile or broken server.
type server struct {
	begins *atomic.Int32 // begin requests seen
	// beginCerts records, per begin, the common name of the client
	// certificate it came with ("" without one).
	beginCerts *certLog
	handler    http.Handler
	url        string
	ca         *pki.CA
	mfr        *tpmsim.Manufacturer
}

// benchServer serves enrollment for a benchmark and returns its URL.
func benchServer(b *testing.B, ca *pki.CA, mfr *tpmsim.Manufacturer) string {
	b.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(mfr.Certificate)
	srv := enrollservertest.New(b, enrollserver.Config{CA: ca, ManufacturerRoots: roots}, nil).Server
	ts := httptest.NewUnstartedServer(httpapi.NewHandler(srv, httpapi.Options{}))
	cert, err := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	ts.StartTLS()
	b.Cleanup(ts.Close)
	return ts.URL
}

func newServer(t *testing.T, ca *pki.CA, issuer pki.Issuer, mfr *tpmsim.Manufacturer, version uint64, rewrite func(*api.FinishResponse), opts ...func(*enrollserver.Config)) *server {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(mfr.Certificate)
	cfg := enrollserver.Config{
		CA: ca, Issuer: issuer, ManufacturerRoots: roots,
		Bundles: enrollserver.StaticBundle{Version: version, Config: json.RawMessage(`{"v":1}`)},
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv := enrollservertest.New(t, cfg, nil).Server
	h := httpapi.NewHandler(srv, httpapi.Options{})
	if rewrite != nil {
		h = rewriting(h, api.PathFinish, rewrite)
	}
	begins := new(atomic.Int32)
	beginCerts := new(certLog)
	inner := h
	h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == api.PathBegin {
			begins.Add(1)
			cn := ""
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
				cn = r.TLS.PeerCertificates[0].Subject.CommonName
			}
			beginCerts.add(cn)
		}
		inner.ServeHTTP(w, r)
	})
	ts := httptest.NewUnstartedServer(h)
	cert, err := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.RootPool()}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return &server{url: ts.URL, ca: ca, mfr: mfr, begins: begins, beginCerts: beginCerts, handler: h}
}

type certLog struct {
	mu  sync.Mutex
	cns []string
}

func (l *certLog) add(cn string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cns = append(l.cns, cn)
}

func (l *certLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.cns)
}

// rewriting passes the answers of path (T: its response type) through fn.
func rewriting[T any](h http.Handler, path string, fn func(*T)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if rec.Code == http.StatusOK {
			var resp T
			if err := json.Unmarshal(body, &resp); err == nil {
				fn(&resp)
				body, _ = json.Marshal(&resp)
			}
		}
		w.Header().Set("Content-Type", api.ContentTypeJSON)
		w.WriteHeader(rec.Code)
		io.Copy(w, bytes.NewReader(body))
	})
}

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// newTPM manufactures a simulated TPM whose EK mfr certifies.
func newTPM(t *testing.T) (dir string, mfr *tpmsim.Manufacturer) {
	t.Helper()
	mfr, err := tpmsim.NewManufacturer("test vendor")
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(t.TempDir(), "tpm")
	if _, err := tpmsim.ManufactureState(dir, mfr); err != nil {
		t.Fatalf("the TPM simulator is required (cgo, gcc, libssl-dev): %v", err)
	}
	return dir, mfr
}

func newAgent(t *testing.T, s *server, tpmDir, cachePath string) *device.Agent {
	t.Helper()
	sim, err := tpmsim.OpenState(tpmDir)
	if err != nil {
		t.Fatalf("the TPM simulator is required (cgo, gcc, libssl-dev): %v", err)
	}
	a, err := device.New(context.Background(), device.Config{
		ServerURL: s.url, Roots: s.ca.RootPool(), TPM: sim, CachePath: cachePath,
		RequestTimeout: 10 * time.Second,
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

var once = device.RetryPolicy{Attempts: 1}

func TestEnrollAndWhoami(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	s := newServer(t, ca, nil, mfr, 2, nil)
	cachePath := filepath.Join(t.TempDir(), "agent.db")
	a := newAgent(t, s, tpmDir, cachePath)
	res, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bundle.Version != 2 || res.Leaf == nil || len(res.Chain) != 2 {
		t.Fatalf("result = %+v", res)
	}
	who, err := a.Whoami(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if who.DeviceID != a.DeviceID() {
		t.Errorf("whoami = %s, want %s", who.DeviceID, a.DeviceID())
	}
	e, err := a.Enrollment()
	if err != nil || e.BundleVersion != 2 || e.DeviceID != a.DeviceID() {
		t.Errorf("cached enrollment = %+v, %v", e, err)
	}
	if fi, err := os.Stat(cachePath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file mode: %v, %v", fi, err)
	}
}

// TestRefusesUntrustedAnswers: the agent trusts nothing from the server
// that does not verify against its root, and caches nothing then.
func TestRefusesUntrustedAnswers(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	otherCA := newCA(t)
	cases := []struct {
		name    string
		issuer  pki.Issuer
		rewrite func(*api.FinishResponse)
		want    string
	}{
		{"device certificate from another CA", otherCA, nil, "does not chain to the enrollment root"},
		{"empty chain", nil, func(fr *api.FinishResponse) { fr.CertificateChain = nil }, "certificate chain has 0"},
		{"bundle tampered", nil, func(fr *api.FinishResponse) {
			parts := strings.Split(fr.Bundle, ".")
			parts[1] = parts[1][:len(parts[1])-2] + "AA"
			fr.Bundle = strings.Join(parts, ".")
		}, "config bundle"},
		{"bundle signed by another CA", nil, func(fr *api.FinishResponse) {
			var err error
			fr.Bundle, err = otherCA.SignBundle(pki.Bundle{DeviceID: fr.DeviceID, Version: 9, IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour), Config: json.RawMessage(`{}`)})
			if err != nil {
				panic(err)
			}
		}, "config bundle"},
		{"bundle for another device", nil, func(fr *api.FinishResponse) {
			var err error
			fr.Bundle, err = ca.SignBundle(pki.Bundle{DeviceID: strings.Repeat("ab", 32), Version: 9, IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour), Config: json.RawMessage(`{}`)})
			if err != nil {
				panic(err)
			}
		}, "config bundle"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer(t, ca, tc.issuer, mfr, 1, tc.rewrite)
			a := newAgent(t, s, tpmDir, filepath.Join(t.TempDir(), "agent.db"))
			_, err := a.Enroll(context.Background(), once)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if _, err := a.Enrollment(); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("refused answer was cached: %v", err)
			}
		})
	}
}

// TestBundleRollbackRefused: a lower bundle version than the one stored is
// refused and the stored one kept, while the new certificate is taken.
func TestBundleRollbackRefused(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	cachePath := filepath.Join(t.TempDir(), "agent.db")
	a := newAgent(t, newServer(t, ca, nil, mfr, 5, nil), tpmDir, cachePath)
	first, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a = newAgent(t, newServer(t, ca, nil, mfr, 4, nil), tpmDir, cachePath)
	res, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	if res.BundleAccepted {
		t.Error("bundle version 4 accepted over version 5")
	}
	e, err := a.Enrollment()
	if err != nil || e.BundleVersion != 5 {
		t.Fatalf("cached = %+v, %v; want version 5 kept", e, err)
	}
	if e.CertificateChain[0] == nil || bytes.Equal(e.CertificateChain[0], first.Leaf.Raw) {
		t.Error("the renewed certificate was not stored")
	}
	if st := a.CachedState(time.Now()); !st.Ready || st.BundleVersion != 5 {
		t.Errorf("state after refused rollback = %+v", st)
	}
}

// TestPermanentRefusalIsNotRetried: an untrusted EK is reported at once.
func TestPermanentRefusalIsNotRetried(t *testing.T) {
	tpmDir, _ := newTPM(t)
	other, err := tpmsim.NewManufacturer("another vendor")
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, newCA(t), nil, other, 1, nil)
	a := newAgent(t, s, tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	_, err = a.Enroll(context.Background(), device.RetryPolicy{Attempts: 5, Base: time.Millisecond, Max: time.Millisecond})
	if !errors.Is(err, &api.Error{Code: api.CodeEKUntrusted}) {
		t.Fatalf("got %v, want ek_untrusted", err)
	}
	if n := s.begins.Load(); device.IsTransient(err) || n != 1 {
		t.Errorf("permanent refusal: %d begin requests, want 1", n)
	}
}

// TestFailedRenewalKeepsOldState: a renewal whose answer does not verify
// changes nothing: the old certificate and bundle stay, still ready.
func TestFailedRenewalKeepsOldState(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	cachePath := filepath.Join(t.TempDir(), "agent.db")
	a := newAgent(t, newServer(t, ca, nil, mfr, 3, nil), tpmDir, cachePath)
	if _, err := a.Enroll(context.Background(), once); err != nil {
		t.Fatal(err)
	}
	before, err := a.Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	bad := newServer(t, ca, nil, mfr, 4, func(fr *api.FinishResponse) {
		parts := strings.Split(fr.Bundle, ".")
		parts[2] = parts[2][:len(parts[2])-4] + "AAAA" // signature
		fr.Bundle = strings.Join(parts, ".")
	})
	a = newAgent(t, bad, tpmDir, cachePath)
	if _, err := a.Enroll(context.Background(), once); err == nil || !strings.Contains(err.Error(), "config bundle") {
		t.Fatalf("renewal with a forged bundle: %v", err)
	}
	after, err := a.Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after.CertificateChain[0], before.CertificateChain[0]) || after.BundleVersion != 3 {
		t.Error("a refused renewal changed the cached certificate or bundle")
	}
	if st := a.CachedState(time.Now()); !st.Ready {
		t.Errorf("not ready after a refused renewal: %s", st.Reason)
	}
}

// TestEnrollWithECCEK: a TPM certified for its ECC P-256 EK only (no RSA
// EK certificate) enrolls with that EK, and its device ID is the ECC EK's.
func TestEnrollWithECCEK(t *testing.T) {
	mfr, err := tpmsim.NewManufacturer("ecc vendor")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "tpm")
	sim, err := tpmsim.OpenState(dir) // a fresh TPM, no RSA EK certificate
	if err != nil {
		t.Fatalf("the TPM simulator is required (cgo): %v", err)
	}
	ekPub, _, err := tpmsim.ManufactureECCEK(sim, mfr, nil)
	if err != nil {
		t.Fatal(err)
	}
	ca := newCA(t)
	s := newServer(t, ca, nil, mfr, 1, nil)
	a, err := device.New(context.Background(), device.Config{
		ServerURL: s.url, Roots: ca.RootPool(), TPM: sim, CachePath: filepath.Join(t.TempDir(), "agent.db"),
		RequestTimeout: 10 * time.Second, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	res, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(ekPub)
	if want := fmt.Sprintf("%x", sha256.Sum256(der)); res.DeviceID != want {
		t.Errorf("device ID %s, want the ECC EK's %s", res.DeviceID, want)
	}
}

// TestApplyPushedBundle: a pushed bundle is taken only if it verifies for
// this device and is not older than the stored one.
func TestApplyPushedBundle(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	a := newAgent(t, newServer(t, ca, nil, mfr, 5, nil), tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	if _, err := a.Enroll(context.Background(), once); err != nil {
		t.Fatal(err)
	}
	sign := func(signer *pki.CA, id string, version uint64) string {
		t.Helper()
		b, err := signer.SignBundle(pki.Bundle{DeviceID: id, Version: version, IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour), Config: json.RawMessage(`{"v":2}`)})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	id := a.DeviceID()
	if _, _, err := a.ApplyBundle(sign(newCA(t), id, 9)); err == nil {
		t.Error("a bundle signed by another CA was applied")
	}
	if _, _, err := a.ApplyBundle(sign(ca, strings.Repeat("ab", 32), 9)); err == nil {
		t.Error("a bundle for another device was applied")
	}
	if _, taken, err := a.ApplyBundle(sign(ca, id, 4)); err != nil || taken {
		t.Errorf("older bundle: taken %v, %v", taken, err)
	}
	if _, taken, err := a.ApplyBundle(sign(ca, id, 6)); err != nil || !taken {
		t.Errorf("newer bundle: taken %v, %v", taken, err)
	}
	if e, _ := a.Enrollment(); e.BundleVersion != 6 {
		t.Errorf("stored version %d, want 6", e.BundleVersion)
	}
}

// TestWhoamiAfterRenewal: after a renewal the mTLS call presents the new
// certificate, not a connection made with the old one.
func TestWhoamiAfterRenewal(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	ca := newCA(t)
	a := newAgent(t, newServer(t, ca, nil, mfr, 1, nil), tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	for i := range 2 {
		res, err := a.Enroll(context.Background(), once)
		if err != nil {
			t.Fatal(err)
		}
		who, err := a.Whoami(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if who.Serial != res.Leaf.SerialNumber.Text(16) {
			t.Errorf("enrollment %d: whoami saw certificate %s, want the new %s", i, who.Serial, res.Leaf.SerialNumber.Text(16))
		}
	}
}

// A renewal presents the device's certificate on begin, so the server can
// tell it from a first enrollment before reading it (priority under load);
// a first enrollment has none to present.
func TestRenewalPresentsCertificate(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	s := newServer(t, newCA(t), nil, mfr, 1, nil)
	a := newAgent(t, s, tpmDir, filepath.Join(t.TempDir(), "agent.db"))
	for range 2 {
		if _, err := a.Enroll(context.Background(), once); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := s.beginCerts.all(), []string{"", a.DeviceID()}; !slices.Equal(got, want) {
		t.Errorf("client certificates on begin: %q, want %q", got, want)
	}
}
