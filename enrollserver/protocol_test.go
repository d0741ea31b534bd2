package enrollserver_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/enrollserver/enrollservertest"
	"github.com/edgeenroll/edgeenroll/enrollserver/httpapi"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// One simulated TPM per test binary (the simulator is a process-wide
// singleton); tests using it run sequentially and close what they load.
var (
	sim    *tpmsim.TPM
	simErr error
)

func TestMain(m *testing.M) {
	sim, simErr = tpmsim.Open(7)
	if sim != nil {
		// The simulator's endorsement seed changes at its first reset
		// (go-tpm-tools applies the fixed seed after startup) and then
		// stays. Measured-boot tests reset it to "power on" with new
		// firmware: reset once now, so every test sees the same EK.
		simErr = sim.Reset()
	}
	code := m.Run()
	if sim != nil {
		sim.Close()
	}
	os.Exit(code)
}

// device is a test device driving the real simulated TPM through
// go-attestation. Its AK and key are kept as TPM-wrapped blobs and loaded
// only while used: the simulator holds about two transient objects.
type device struct {
	t       testing.TB
	tpm     *goattest.TPM
	ek      goattest.EK
	ekDER   []byte
	ekCert  []byte
	akBlob  []byte
	keyBlob []byte
}

func newDevice(t testing.TB, mfr *tpmsim.Manufacturer) *device {
	t.Helper()
	if sim == nil {
		t.Fatalf("the TPM simulator is required (cgo, gcc, libssl-dev): %v", simErr)
	}
	tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: nopCloser{sim}})
	if err != nil {
		t.Fatal(err)
	}
	eks, err := tpm.EKs()
	if err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, tpm: tpm, ek: eks[0]}
	d.ekDER, _ = x509.MarshalPKIXPublicKey(d.ek.Public)
	if mfr != nil {
		if d.ekCert, err = mfr.IssueEKCertificate(d.ek.Public); err != nil {
			t.Fatal(err)
		}
	}
	d.akBlob, d.keyBlob = d.newIdentity()
	return d
}

// newIdentity creates an AK and a key certified by it, as blobs.
func (d *device) newIdentity() (akBlob, keyBlob []byte) {
	d.t.Helper()
	ak, err := d.tpm.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
	if err != nil {
		d.t.Fatal(err)
	}
	defer ak.Close(d.tpm)
	key, err := d.tpm.NewKey(ak, &goattest.KeyConfig{Algorithm: goattest.ECDSA, Size: 256})
	if err != nil {
		d.t.Fatal(err)
	}
	defer key.Close()
	if akBlob, err = ak.Marshal(); err != nil {
		d.t.Fatal(err)
	}
	if keyBlob, err = key.Marshal(); err != nil {
		d.t.Fatal(err)
	}
	return akBlob, keyBlob
}

// nopCloser keeps go-attestation from closing the shared simulator.
type nopCloser struct{ *tpmsim.TPM }

func (nopCloser) Close() error { return nil }

func (d *device) loadAK(blob []byte) *goattest.AK {
	d.t.Helper()
	ak, err := d.tpm.LoadAK(blob)
	if err != nil {
		d.t.Fatal(err)
	}
	return ak
}

func (d *device) begin() *api.BeginRequest {
	ak := d.loadAK(d.akBlob)
	defer ak.Close(d.tpm)
	p := ak.AttestationParameters()
	return &api.BeginRequest{
		EKPublic:      d.ekDER,
		EKCertificate: d.ekCert,
		AK:            api.AttestationParameters{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature},
		Device:        api.DeviceInfo{Hostname: "test-device"},
	}
}

// finish answers br honestly with the device's AK and key, quoting nonce.
func (d *device) finish(br *api.BeginResponse, nonce []byte) *api.FinishRequest {
	return d.finishWith(br, d.akBlob, d.keyBlob, nonce)
}

func (d *device) finishWith(br *api.BeginResponse, akBlob, keyBlob, nonce []byte) *api.FinishRequest {
	t := d.t
	t.Helper()
	ak := d.loadAK(akBlob)
	secret, err := ak.ActivateCredential(d.tpm, goattest.EncryptedCredential{Credential: br.Challenge.Credential, Secret: br.Challenge.Secret})
	if err != nil {
		// An AK that is not beside the challenged EK cannot activate:
		// the attacker can only guess.
		secret = make([]byte, 32)
	}
	q, err := ak.QuotePCRs(d.tpm, nonce, goattest.HashSHA256, br.PCRs)
	ak.Close(d.tpm)
	if err != nil {
		t.Fatal(err)
	}
	all, err := d.tpm.PCRs(goattest.HashSHA256)
	if err != nil {
		t.Fatal(err)
	}
	var pcrs []api.PCR
	for _, p := range all {
		if slices.Contains(br.PCRs, p.Index) {
			pcrs = append(pcrs, api.PCR{Index: p.Index, Digest: p.Digest})
		}
	}
	key, err := d.tpm.LoadKey(keyBlob)
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	cp := key.CertificationParameters()
	priv, err := key.Private(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, priv.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	return &api.FinishRequest{
		SessionID:       br.SessionID,
		ActivationProof: api.ActivationProof(secret, br.SessionID),
		Quote:           api.Quote{Quote: q.Quote, Signature: q.Signature},
		PCRs:            pcrs,
		Key:             api.CertificationParameters{Public: cp.Public, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature},
		CSR:             csr,
	}
}

func (d *device) keyPublic() crypto.PublicKey {
	key, err := d.tpm.LoadKey(d.keyBlob)
	if err != nil {
		d.t.Fatal(err)
	}
	defer key.Close()
	return key.Public()
}

// env is a server on real TLS with a clock the test controls.
type env struct {
	t      *testing.T
	ca     *pki.CA
	store  *store.Bolt
	mfr    *tpmsim.Manufacturer
	url    string
	client *http.Client
	mu     sync.Mutex
	now    time.Time
	srv    *enrollserver.Server
	reg    *prometheus.Registry
}

// newEnv is newEnvAdmission with a per-device request rate high enough for
// tests that play one simulated TPM again and again.
func newEnv(t *testing.T, opts ...func(*enrollserver.Config)) *env {
	t.Helper()
	return newEnvAdmission(t, admission.Options{DeviceRate: 1000}, opts...)
}

// newEnvAdmission is a server behind the HTTPS handler with an admission
// controller of adm (its metrics on the env's registry).
func newEnvAdmission(t *testing.T, adm admission.Options, opts ...func(*enrollserver.Config)) *env {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "ca"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, "enroll.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	mfr, err := tpmsim.NewManufacturer("test TPM vendor")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(mfr.Certificate)
	reg := prometheus.NewRegistry()
	e := &env{t: t, ca: ca, store: st, mfr: mfr, now: time.Now(), reg: reg}
	cfg := enrollserver.Config{
		Store: st, CA: ca, ManufacturerRoots: roots, SessionTTL: time.Minute, Registerer: reg,
		Bundles: enrollserver.StaticBundle{Version: 3, Config: json.RawMessage(`{"k":"v"}`)},
		Now:     e.clock,
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := enrollserver.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	adm.Registerer = reg
	ctrl, err := admission.New(&adm)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctrl.Close)
	ts := httptest.NewUnstartedServer(httpapi.NewHandler(srv, httpapi.Options{Gatherer: reg, Admission: ctrl}))
	cert, err := ca.IssueServer([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.RootPool(), MinVersion: tls.VersionTLS13}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	e.url = ts.URL
	e.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.RootPool()}}}
	return e
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

// post sends v (or raw bytes) and decodes a 200 into out; a refusal comes
// back as *api.Error.
func (e *env) post(path string, v any, out any) error {
	e.t.Helper()
	body, ok := v.([]byte)
	if !ok {
		var err error
		if body, err = json.Marshal(v); err != nil {
			e.t.Fatal(err)
		}
	}
	resp, err := e.client.Post(e.url+path, api.ContentTypeJSON, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var ae api.Error
		if err := json.Unmarshal(raw, &ae); err != nil {
			e.t.Fatalf("HTTP %d with undecodable body %q", resp.StatusCode, raw)
		}
		if want := httpapi.StatusOf(ae.Code); resp.StatusCode != want {
			e.t.Errorf("code %s came with HTTP %d, want %d", ae.Code, resp.StatusCode, want)
		}
		return &ae
	}
	return json.Unmarshal(raw, out)
}

func (e *env) begin(d *device) *api.BeginResponse {
	e.t.Helper()
	var br api.BeginResponse
	if err := e.post(api.PathBegin, d.begin(), &br); err != nil {
		e.t.Fatalf("begin: %v", err)
	}
	return &br
}

func wantCode(t *testing.T, err error, code api.Code) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("got %v, want refusal %s", err, code)
	}
	if ae.Code != code {
		t.Fatalf("got %s (%s), want %s", ae.Code, ae.Message, code)
	}
	if ae.Message == "" || ae.CorrelationID == "" {
		t.Errorf("refusal lacks message or correlation id: %+v", ae)
	}
}

func TestEnrollHappyPathAndIdempotency(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, e.mfr)
	br := e.begin(d)
	req := d.finish(br, br.Nonce)
	var fr api.FinishResponse
	if err := e.post(api.PathFinish, req, &fr); err != nil {
		t.Fatalf("finish: %v", err)
	}
	leaf, err := x509.ParseCertificate(fr.CertificateChain[0])
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	for _, der := range fr.CertificateChain[1:] {
		c, _ := x509.ParseCertificate(der)
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.ca.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("issued certificate does not verify: %v", err)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(d.keyPublic()) {
		t.Error("certificate is not for the TPM key")
	}
	b, err := pki.VerifyBundle(fr.Bundle, e.ca.RootPool(), br.DeviceID, time.Now())
	if err != nil || b.Version != 3 {
		t.Fatalf("bundle: %+v, %v", b, err)
	}

	// The same finish again (a retry after a lost response) gets the same
	// answer, and no second certificate.
	var again api.FinishResponse
	if err := e.post(api.PathFinish, req, &again); err != nil {
		t.Fatalf("repeated finish: %v", err)
	}
	if !bytes.Equal(again.CertificateChain[0], fr.CertificateChain[0]) {
		t.Error("repeated finish issued a different certificate")
	}

	// Re-enrolling the same TPM updates the one record.
	br2 := e.begin(d)
	if err := e.post(api.PathFinish, d.finish(br2, br2.Nonce), &fr); err != nil {
		t.Fatalf("re-enrollment: %v", err)
	}
	n := 0
	e.store.Devices(context.Background(), func(dev *store.Device) bool {
		n++
		if dev.Enrollments != 2 {
			t.Errorf("enrollments = %d, want 2", dev.Enrollments)
		}
		return true
	})
	if n != 1 {
		t.Errorf("%d device records, want 1", n)
	}
}

func TestPreregisteredDeviceWithoutEKCertificate(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, nil)
	var br api.BeginResponse
	wantCode(t, e.post(api.PathBegin, d.begin(), &br), api.CodeNotRegistered)

	id := strings.TrimSpace(deviceID(d.ekDER))
	if err := e.store.PutPreregistrations(context.Background(), []*store.Preregistration{{DeviceID: id, Serial: "SN-1", Group: "line-a"}}); err != nil {
		t.Fatal(err)
	}
	b := e.begin(d)
	var fr api.FinishResponse
	if err := e.post(api.PathFinish, d.finish(b, b.Nonce), &fr); err != nil {
		t.Fatalf("finish: %v", err)
	}
	dev, err := e.store.Device(context.Background(), id)
	if err != nil || dev.Serial != "SN-1" || dev.Admission != store.AdmissionPreregistered {
		t.Errorf("device = %+v, %v", dev, err)
	}
}

// TestRefusals forges, swaps or replays one input per case and expects its
// stable code.
func TestRefusals(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, e.mfr)

	otherVendor, err := tpmsim.NewManufacturer("unknown vendor")
	if err != nil {
		t.Fatal(err)
	}
	otherEK, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherEKDER, _ := x509.MarshalPKIXPublicKey(&otherEK.PublicKey)
	otherEKCert, err := e.mfr.IssueEKCertificate(&otherEK.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	beginCases := []struct {
		name   string
		mutate func(*api.BeginRequest)
		code   api.Code
	}{
		{"ek cert from unknown root", func(r *api.BeginRequest) {
			r.EKCertificate, _ = otherVendor.IssueEKCertificate(d.ek.Public)
		}, api.CodeEKUntrusted},
		{"ek cert valid but ek public key swapped", func(r *api.BeginRequest) { r.EKPublic = otherEKDER }, api.CodeEKUntrusted},
		{"ak parameters tampered", func(r *api.BeginRequest) { r.AK.CreateAttestation[len(r.AK.CreateAttestation)-1] ^= 1 }, api.CodeAKInvalid},
		{"ak is a non-restricted key", func(r *api.BeginRequest) {
			key, err := d.tpm.LoadKey(d.keyBlob)
			if err != nil {
				t.Fatal(err)
			}
			defer key.Close()
			cp := key.CertificationParameters()
			r.AK = api.AttestationParameters{Public: cp.Public, CreateData: r.AK.CreateData, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature}
		}, api.CodeAKInvalid},
		{"garbage ek public key", func(r *api.BeginRequest) { r.EKPublic = []byte("not a key") }, api.CodeBadRequest},
	}
	for _, tc := range beginCases {
		t.Run("begin/"+tc.name, func(t *testing.T) {
			req := d.begin()
			tc.mutate(req)
			var br api.BeginResponse
			wantCode(t, e.post(api.PathBegin, req, &br), tc.code)
		})
	}

	t.Run("ak from another TPM", func(t *testing.T) {
		// Another TPM's genuine EK certificate, presented with this TPM's
		// AK: the challenge is sealed to the other EK, which this TPM
		// cannot open.
		req := d.begin()
		req.EKPublic, req.EKCertificate = otherEKDER, otherEKCert
		var br api.BeginResponse
		if err := e.post(api.PathBegin, req, &br); err != nil {
			t.Fatalf("begin: %v", err)
		}
		var fr api.FinishResponse
		wantCode(t, e.post(api.PathFinish, d.finish(&br, br.Nonce), &fr), api.CodeActivationFailed)
	})

	// Finish refusals: each starts a fresh session.
	otherAKBlob, otherKeyBlob := d.newIdentity()
	finishCases := []struct {
		name   string
		answer func(br *api.BeginResponse) *api.FinishRequest
		code   api.Code
	}{
		{"wrong activation secret", func(br *api.BeginResponse) *api.FinishRequest {
			r := d.finish(br, br.Nonce)
			r.ActivationProof = api.ActivationProof(make([]byte, 32), br.SessionID)
			return r
		}, api.CodeActivationFailed},
		{"quote over another nonce", func(br *api.BeginResponse) *api.FinishRequest {
			return d.finish(br, bytes.Repeat([]byte{7}, api.NonceSize))
		}, api.CodeQuoteInvalid},
		{"quote signed by a different AK", func(br *api.BeginResponse) *api.FinishRequest {
			r := d.finish(br, br.Nonce)
			other := d.finishWith(br, otherAKBlob, d.keyBlob, br.Nonce)
			r.Quote = other.Quote
			return r
		}, api.CodeQuoteInvalid},
		{"pcr value altered", func(br *api.BeginResponse) *api.FinishRequest {
			r := d.finish(br, br.Nonce)
			r.PCRs[0].Digest = bytes.Repeat([]byte{0xaa}, 32)
			return r
		}, api.CodeQuoteInvalid},
		{"key certified by another AK", func(br *api.BeginResponse) *api.FinishRequest {
			return d.finishWith(br, d.akBlob, otherKeyBlob, br.Nonce)
		}, api.CodeKeyNotCertified},
		{"csr key different from the certified key", func(br *api.BeginResponse) *api.FinishRequest {
			r := d.finish(br, br.Nonce)
			soft, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			r.CSR, _ = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, soft)
			return r
		}, api.CodeKeyNotCertified},
		{"unknown session", func(br *api.BeginResponse) *api.FinishRequest {
			r := d.finish(br, br.Nonce)
			r.SessionID = strings.Repeat("ab", api.SessionIDLen/2)
			return r
		}, api.CodeNonceUnknownOrUsed},
	}
	for _, tc := range finishCases {
		t.Run("finish/"+tc.name, func(t *testing.T) {
			br := e.begin(d)
			var fr api.FinishResponse
			wantCode(t, e.post(api.PathFinish, tc.answer(br), &fr), tc.code)
		})
	}

	t.Run("finish/session expired", func(t *testing.T) {
		br := e.begin(d)
		req := d.finish(br, br.Nonce)
		e.advance(2 * time.Minute)
		var fr api.FinishResponse
		wantCode(t, e.post(api.PathFinish, req, &fr), api.CodeNonceUnknownOrUsed)
	})

	t.Run("finish/nonce reused after success", func(t *testing.T) {
		br := e.begin(d)
		var fr api.FinishResponse
		if err := e.post(api.PathFinish, d.finish(br, br.Nonce), &fr); err != nil {
			t.Fatalf("finish: %v", err)
		}
		// New evidence over the used session's nonce is refused ...
		wantCode(t, e.post(api.PathFinish, d.finish(br, br.Nonce), &fr), api.CodeNonceUnknownOrUsed)
		// ... and so is the old quote in a new session.
		br2 := e.begin(d)
		replay := d.finish(br, br.Nonce)
		replay.SessionID = br2.SessionID
		wantCode(t, e.post(api.PathFinish, replay, &fr), api.CodeActivationFailed)
		replay2 := d.finish(br2, br2.Nonce)
		replay2.Quote = d.finish(br, br.Nonce).Quote
		wantCode(t, e.post(api.PathFinish, replay2, &fr), api.CodeQuoteInvalid)
	})

	badJSON := []struct {
		name string
		body []byte
	}{
		{"not json", []byte("hello")},
		{"unknown field", []byte(`{"ek_public":"AA==","bogus":1}`)},
		{"duplicate key", []byte(`{"ek_public":"AA==","ek_public":"AA=="}`)},
		{"trailing data", []byte(`{"ek_public":"AA=="} {}`)},
		{"missing fields", []byte(`{}`)},
		{"oversized", append(append([]byte(`{"ek_public":"`), bytes.Repeat([]byte("A"), api.MaxRequestBytes)...), []byte(`"}`)...)},
	}
	for _, tc := range badJSON {
		t.Run("json/"+tc.name, func(t *testing.T) {
			var br api.BeginResponse
			wantCode(t, e.post(api.PathBegin, tc.body, &br), api.CodeBadRequest)
			var fr api.FinishResponse
			wantCode(t, e.post(api.PathFinish, tc.body, &fr), api.CodeBadRequest)
		})
	}
}

func deviceID(ekDER []byte) string {
	return fmt.Sprintf("%x", sha256.Sum256(ekDER))
}

// TestNoManufacturerRoots: a server that trusts no vendor refuses an EK
// certificate as untrusted (not as a malformed request), saying what to do.
func TestNoManufacturerRoots(t *testing.T) {
	srv := enrollservertest.New(t, enrollserver.Config{}, nil).Server
	mfr, err := tpmsim.NewManufacturer("vendor")
	if err != nil {
		t.Fatal(err)
	}
	d := newDevice(t, mfr)
	_, err = srv.Begin(context.Background(), "c", d.begin())
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeEKUntrusted || !strings.Contains(ae.Message, "--manufacturer-roots") {
		t.Fatalf("got %v, want ek_untrusted naming --manufacturer-roots", err)
	}
}
