package device

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device/cache"
	"github.com/edgeenroll/edgeenroll/device/tpmdev"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Version is reported to the server as the agent version.
const Version = "0.1.0"

// Config configures an Agent.
type Config struct {
	// ServerURL is the enrollment server's base URL (https://host:port).
	ServerURL string
	// Roots holds the enrollment root installed on the device: the only
	// trust anchor for the server's TLS certificate, the device
	// certificate chain and the bundle signature.
	Roots *x509.CertPool
	// TrustDomain is the server's trust domain, checked in the issued
	// certificate's URI SAN.
	TrustDomain string
	// TPM is the device's TPM. The agent owns it until Close.
	TPM transport.TPMCloser
	// EventLogPath is the TCG event log sent with quotes ("" for none).
	EventLogPath string
	// CachePath is the agent's bbolt file.
	CachePath string
	// Hostname is reported to the server for operators (untrusted there).
	Hostname string
	// RequestTimeout bounds each request; 0 means 30 s.
	RequestTimeout time.Duration
	// Logger receives one line per phase; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Agent enrolls one device. Its methods may be called from several
// goroutines; TPM access is serialised inside.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	cache *cache.Cache
	http  *httpClient
	mtls  *httpClient

	tpmMu    sync.Mutex // guards every TPM command sequence
	tpm      *goattest.TPM
	ek       goattest.EK
	ekDER    []byte // PKIX DER of ek.Public
	deviceID string
	ak       *goattest.AK
	key      *goattest.Key
}

// New opens the TPM and the cache and loads or creates the device's AK and
// TPM key. On error everything opened is closed again (the TPM included).
func New(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if cfg.ServerURL == "" || cfg.Roots == nil || cfg.TPM == nil || cfg.CachePath == "" {
		return nil, errors.New("device: ServerURL, Roots, TPM and CachePath are required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = pki.DefaultOptions().TrustDomain
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Agent{cfg: cfg, log: cfg.Logger}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	a.tpm, err = goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: tpmdev.NewChannel(cfg.TPM, cfg.EventLogPath)})
	if err != nil {
		cfg.TPM.Close()
		return nil, fmt.Errorf("opening TPM: %w", err)
	}
	if a.cache, err = cache.Open(cfg.CachePath); err != nil {
		return nil, err
	}
	if err := a.loadEK(); err != nil {
		return nil, err
	}
	if err := a.loadIdentity(); err != nil {
		return nil, err
	}
	a.http = newHTTPClient(cfg.ServerURL, cfg.Roots, nil)
	a.mtls = newHTTPClient(cfg.ServerURL, cfg.Roots, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return a.TLSCertificate()
	})
	return a, nil
}

// Close releases TPM objects, the TPM and the cache.
func (a *Agent) Close() error {
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	var errs []error
	if a.key != nil {
		errs = append(errs, a.key.Close())
		a.key = nil
	}
	if a.ak != nil {
		errs = append(errs, a.ak.Close(a.tpm))
		a.ak = nil
	}
	if a.tpm != nil {
		errs = append(errs, a.tpm.Close())
		a.tpm = nil
	}
	if a.cache != nil {
		errs = append(errs, a.cache.Close())
		a.cache = nil
	}
	if a.http != nil {
		a.http.close()
		a.mtls.close()
	}
	return errors.Join(errs...)
}

// DeviceID is the hex SHA-256 of the EK public key (PKIX DER).
func (a *Agent) DeviceID() string { return a.deviceID }

func (a *Agent) loadEK() error {
	eks, err := a.tpm.EKs()
	if err != nil {
		return fmt.Errorf("reading endorsement keys: %w", err)
	}
	if len(eks) == 0 {
		return errors.New("the TPM reports no endorsement key")
	}
	// Prefer an EK with a manufacturer certificate.
	a.ek = eks[0]
	for _, ek := range eks {
		if ek.Certificate != nil {
			a.ek = ek
			break
		}
	}
	der, err := x509.MarshalPKIXPublicKey(a.ek.Public)
	if err != nil {
		return fmt.Errorf("encoding EK public key: %w", err)
	}
	a.ekDER = der
	sum := sha256.Sum256(der)
	a.deviceID = hex.EncodeToString(sum[:])
	return nil
}

// loadIdentity loads the AK and TPM key from the cache, or creates both
// and stores their TPM-wrapped blobs in one write. Blobs the TPM refuses
// (after a TPM clear, or from the simulator, whose storage hierarchy does
// not survive a restart) are replaced: the device's identity is its EK,
// and a new AK and key are attested afresh at the next enrollment.
func (a *Agent) loadIdentity() error {
	id, err := a.cache.Identity()
	switch {
	case err == nil && id.DeviceID == a.deviceID:
		if err := a.loadBlobs(id); err == nil {
			return nil
		} else {
			a.log.Warn("the TPM refused the cached AK or key (TPM cleared?); creating new ones", "device_id", a.deviceID, "err", err)
		}
	case err == nil:
		a.log.Warn("cached identity belongs to another TPM; creating a new one", "cached_device_id", id.DeviceID, "device_id", a.deviceID)
	case !errors.Is(err, cache.ErrNotFound):
		return err
	}
	if a.ak, err = a.tpm.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA}); err != nil {
		return fmt.Errorf("creating AK: %w", err)
	}
	if a.key, err = a.tpm.NewKey(a.ak, &goattest.KeyConfig{Algorithm: goattest.ECDSA, Size: 256}); err != nil {
		return fmt.Errorf("creating TPM key: %w", err)
	}
	akBlob, err := a.ak.Marshal()
	if err != nil {
		return fmt.Errorf("exporting AK blob: %w", err)
	}
	keyBlob, err := a.key.Marshal()
	if err != nil {
		return fmt.Errorf("exporting key blob: %w", err)
	}
	return a.cache.PutIdentity(&cache.Identity{DeviceID: a.deviceID, AKBlob: akBlob, KeyBlob: keyBlob})
}

func (a *Agent) loadBlobs(id *cache.Identity) (err error) {
	if a.ak, err = a.tpm.LoadAK(id.AKBlob); err != nil {
		return fmt.Errorf("loading AK: %w", err)
	}
	if a.key, err = a.tpm.LoadKey(id.KeyBlob); err != nil {
		a.ak.Close(a.tpm)
		a.ak = nil
		return fmt.Errorf("loading TPM key: %w", err)
	}
	return nil
}

// Result is a completed enrollment, as stored in the cache.
type Result struct {
	DeviceID string
	Leaf     *x509.Certificate
	// Chain is the verified chain, leaf first, root excluded.
	Chain         []*x509.Certificate
	Bundle        *pki.Bundle
	CorrelationID string
}

// RetryPolicy bounds Enroll's retries of transient failures.
type RetryPolicy struct {
	Attempts int           // total attempts, at least 1
	Base     time.Duration // first backoff cap
	Max      time.Duration // backoff cap
}

// DefaultRetryPolicy retries for about a minute.
var DefaultRetryPolicy = RetryPolicy{Attempts: 8, Base: 500 * time.Millisecond, Max: 15 * time.Second}

// Enroll runs begin → activate → quote + certify → finish, retrying
// transient failures with exponential backoff and full jitter, honouring
// the server's Retry-After. A permanent refusal returns at once.
func (a *Agent) Enroll(ctx context.Context, p RetryPolicy) (*Result, error) {
	if p.Attempts < 1 {
		p.Attempts = 1
	}
	var err error
	for attempt := 1; ; attempt++ {
		var res *Result
		res, err = a.enrollOnce(ctx)
		if err == nil {
			return res, nil
		}
		var te *TransientError
		if !errors.As(err, &te) || attempt >= p.Attempts {
			return nil, err
		}
		backoff := min(p.Max, p.Base<<(attempt-1))
		wait := time.Duration(mrand.Int64N(int64(backoff) + 1))
		wait = max(wait, te.RetryAfter)
		a.log.Warn("enrollment attempt failed; retrying", "attempt", attempt, "wait", wait.String(), "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("enrollment: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

func (a *Agent) enrollOnce(ctx context.Context) (*Result, error) {
	corr := newCorrelationID()
	log := a.log.With("correlation_id", corr, "device_id", a.deviceID)
	start := a.cfg.Now()

	// Begin: present the EK and the AK's creation parameters.
	begin := api.BeginRequest{
		EKPublic: a.ekDER,
		AK:       apiAKParams(a.ak.AttestationParameters()),
		Device:   api.DeviceInfo{Hostname: a.cfg.Hostname, AgentVersion: Version},
	}
	if a.ek.Certificate != nil {
		begin.EKCertificate = a.ek.Certificate.Raw
	}
	var br api.BeginResponse
	if err := a.call(ctx, http.MethodPost, api.PathBegin, corr, &begin, &br); err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	if br.DeviceID != a.deviceID {
		return nil, fmt.Errorf("begin: server computed device ID %s, this TPM is %s", br.DeviceID, a.deviceID)
	}
	log.Info("enrollment begun", "phase", "begin", "session_id", br.SessionID)

	// Activate, quote and sign the CSR in the TPM.
	finish, err := a.answer(&br)
	if err != nil {
		return nil, err
	}
	log.Info("challenge answered", "phase", "activate")

	var fr api.FinishResponse
	if err := a.call(ctx, http.MethodPost, api.PathFinish, corr, finish, &fr); err != nil {
		return nil, fmt.Errorf("finish: %w", err)
	}

	// Trust nothing in the answer before it verifies against the root.
	res, err := a.verifyFinish(&fr)
	if err != nil {
		return nil, fmt.Errorf("verifying server response: %w", err)
	}
	res.CorrelationID = corr
	if err := a.cache.PutEnrollment(&cache.Enrollment{
		DeviceID:         a.deviceID,
		CertificateChain: fr.CertificateChain,
		NotAfter:         res.Leaf.NotAfter,
		Bundle:           fr.Bundle,
		BundleVersion:    res.Bundle.Version,
		EnrolledAt:       a.cfg.Now(),
	}); err != nil {
		return nil, fmt.Errorf("storing enrollment: %w", err)
	}
	log.Info("enrolled", "phase", "finish", "cert_serial", res.Leaf.SerialNumber.Text(16),
		"not_after", res.Leaf.NotAfter, "bundle_version", res.Bundle.Version, "duration", a.cfg.Now().Sub(start).String())
	return res, nil
}

func (a *Agent) call(ctx context.Context, method, path, corr string, req, resp any) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	return a.http.do(ctx, method, path, corr, req, resp)
}

// answer runs the TPM half of the protocol.
func (a *Agent) answer(br *api.BeginResponse) (*api.FinishRequest, error) {
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	secret, err := a.ak.ActivateCredential(a.tpm, goattest.EncryptedCredential{
		Credential: br.Challenge.Credential,
		Secret:     br.Challenge.Secret,
	})
	if err != nil {
		return nil, fmt.Errorf("activating credential: %w", err)
	}
	quote, err := a.ak.QuotePCRs(a.tpm, br.Nonce, goattest.HashSHA256, br.PCRs)
	if err != nil {
		return nil, fmt.Errorf("quoting PCRs %v: %w", br.PCRs, err)
	}
	all, err := a.tpm.PCRs(goattest.HashSHA256)
	if err != nil {
		return nil, fmt.Errorf("reading PCRs: %w", err)
	}
	want := make(map[int]bool, len(br.PCRs))
	for _, i := range br.PCRs {
		want[i] = true
	}
	var pcrs []api.PCR
	for _, p := range all {
		if want[p.Index] {
			pcrs = append(pcrs, api.PCR{Index: p.Index, Digest: p.Digest})
		}
	}
	signer, err := a.keySigner()
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: a.deviceID},
	}, lockedSigner{signer: signer}) // tpmMu is held here already
	if err != nil {
		return nil, fmt.Errorf("signing CSR with the TPM key: %w", err)
	}
	cp := a.key.CertificationParameters()
	return &api.FinishRequest{
		SessionID:       br.SessionID,
		ActivationProof: api.ActivationProof(secret, br.SessionID),
		Quote:           api.Quote{Quote: quote.Quote, Signature: quote.Signature},
		PCRs:            pcrs,
		Key: api.CertificationParameters{
			Public:            cp.Public,
			CreateAttestation: cp.CreateAttestation,
			CreateSignature:   cp.CreateSignature,
		},
		CSR: csr,
	}, nil
}

func (a *Agent) keySigner() (crypto.Signer, error) {
	priv, err := a.key.Private(a.key.Public())
	if err != nil {
		return nil, fmt.Errorf("opening TPM key: %w", err)
	}
	s, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("TPM key is a %T, not a crypto.Signer", priv)
	}
	return s, nil
}

// verifyFinish checks the certificate chain and bundle the server sent.
func (a *Agent) verifyFinish(fr *api.FinishResponse) (*Result, error) {
	chain, err := a.verifyChain(fr.CertificateChain)
	if err != nil {
		return nil, err
	}
	b, err := pki.VerifyBundle(fr.Bundle, a.cfg.Roots, a.deviceID, a.cfg.Now())
	if err != nil {
		return nil, fmt.Errorf("config bundle: %w", err)
	}
	return &Result{DeviceID: a.deviceID, Leaf: chain[0], Chain: chain, Bundle: b}, nil
}

// verifyChain checks the chain leads to the root with client-auth use,
// names this device, and certifies the TPM key.
func (a *Agent) verifyChain(chain [][]byte) ([]*x509.Certificate, error) {
	if len(chain) == 0 || len(chain) > 4 {
		return nil, fmt.Errorf("certificate chain has %d certificates, want 1 to 4", len(chain))
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	leaf := certs[0]
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: a.cfg.Roots, Intermediates: inter, CurrentTime: a.cfg.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("device certificate does not chain to the enrollment root: %w", err)
	}
	id, err := pki.DeviceIDFromCertificate(leaf, a.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("device certificate: %w", err)
	}
	if id != a.deviceID {
		return nil, fmt.Errorf("device certificate names device %s, this TPM is %s", id, a.deviceID)
	}
	if !publicKeysEqual(leaf.PublicKey, a.key.Public()) {
		return nil, errors.New("device certificate is for a key other than this TPM's key")
	}
	return certs, nil
}

// TLSCertificate returns the cached certificate chain with the TPM key as
// its private key, for mTLS.
func (a *Agent) TLSCertificate() (*tls.Certificate, error) {
	e, err := a.cache.Enrollment()
	if err != nil {
		return nil, fmt.Errorf("no certificate yet (enroll first): %w", err)
	}
	a.tpmMu.Lock()
	signer, err := a.keySigner()
	a.tpmMu.Unlock()
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(e.CertificateChain[0])
	if err != nil {
		return nil, fmt.Errorf("cached certificate: %w", err)
	}
	if !publicKeysEqual(leaf.PublicKey, signer.Public()) {
		return nil, errors.New("the cached certificate is for an older TPM key (the TPM refused the old key blob); enroll again")
	}
	return &tls.Certificate{
		Certificate: e.CertificateChain,
		PrivateKey:  lockedSigner{signer: signer, mu: &a.tpmMu},
		Leaf:        leaf,
	}, nil
}

// Enrollment returns the cached enrollment.
func (a *Agent) Enrollment() (*cache.Enrollment, error) { return a.cache.Enrollment() }

// Whoami calls the server over mTLS with the TPM-backed certificate.
func (a *Agent) Whoami(ctx context.Context) (*api.WhoamiResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	var w api.WhoamiResponse
	if err := a.mtls.do(ctx, http.MethodGet, api.PathWhoami, newCorrelationID(), nil, &w); err != nil {
		return nil, err
	}
	return &w, nil
}

// lockedSigner serialises TPM signing with the agent's other TPM use. A nil
// mu means the caller already holds the lock.
type lockedSigner struct {
	signer crypto.Signer
	mu     *sync.Mutex
}

func (s lockedSigner) Public() crypto.PublicKey { return s.signer.Public() }

func (s lockedSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if s.mu != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
	}
	return s.signer.Sign(r, digest, opts)
}

func apiAKParams(p goattest.AttestationParameters) api.AttestationParameters {
	return api.AttestationParameters{
		Public:            p.Public,
		CreateData:        p.CreateData,
		CreateAttestation: p.CreateAttestation,
		CreateSignature:   p.CreateSignature,
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

func newCorrelationID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ReadIdentity opens tpm just long enough to read its EK and returns the
// device ID and the EK certificate (DER, nil if the TPM has none), for the
// factory line's pre-registration. It closes tpm.
func ReadIdentity(tpm transport.TPMCloser) (deviceID string, ekCert []byte, err error) {
	t, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: tpmdev.NewChannel(tpm, "")})
	if err != nil {
		tpm.Close()
		return "", nil, fmt.Errorf("opening TPM: %w", err)
	}
	defer t.Close()
	a := &Agent{tpm: t}
	if err := a.loadEK(); err != nil {
		return "", nil, err
	}
	if a.ek.Certificate != nil {
		ekCert = a.ek.Certificate.Raw
	}
	return a.deviceID, ekCert, nil
}
