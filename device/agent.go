package device

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeenroll/edgeenroll/device/cache"
	"github.com/edgeenroll/edgeenroll/device/tpmdev"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Version is reported to the server as the agent version.
const Version = "0.2.0"

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
	// Registerer receives the agent's metrics; nil means none exported.
	Registerer prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Transport, if set, makes the transport to the server (MQTT); nil
	// means HTTPS to ServerURL.
	Transport func(certs CertificateSource) (Transport, error)
}

// Agent enrolls one device. Its methods may be called from several
// goroutines; TPM access is serialised inside.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	cache   *cache.Cache
	server  Transport
	channel *tpmdev.Channel // the TPM command channel, and the event log
	metrics *metrics

	tpmMu    sync.Mutex // guards every TPM command sequence and the fields below
	tpm      *goattest.TPM
	ek       *goattest.EK // read lazily: creating an EK can take seconds
	ekDER    []byte       // PKIX DER of ek.Public
	deviceID string
	ak       *goattest.AK
	key      *goattest.Key
}

// New opens the TPM and the cache and loads the device's AK and TPM key
// from their cached blobs, or creates them. With a cached identity it
// touches neither the network nor the EK, so a device with a valid cache is
// ready within milliseconds. On error everything opened is closed again,
// the TPM included.
func New(ctx context.Context, cfg Config) (_ *Agent, err error) {
	if (cfg.ServerURL == "" && cfg.Transport == nil) || cfg.Roots == nil || cfg.TPM == nil || cfg.CachePath == "" {
		if cfg.TPM != nil {
			cfg.TPM.Close()
		}
		return nil, errors.New("device: ServerURL, Roots, TPM and CachePath are required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = pki.DefaultTrustDomain
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
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
	if a.metrics, err = newMetrics(cfg.Registerer); err != nil {
		cfg.TPM.Close()
		return nil, err
	}
	a.channel = tpmdev.NewChannel(cfg.TPM, cfg.EventLogPath)
	a.tpm, err = goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: a.channel})
	if err != nil {
		cfg.TPM.Close()
		return nil, fmt.Errorf("opening TPM: %w", err)
	}
	var moved string
	if a.cache, moved, err = cache.Open(cfg.CachePath); err != nil {
		return nil, err
	}
	if moved != "" {
		a.log.Error("agent cache was corrupt; moved it aside and starting afresh (the device will enroll again)", "moved_to", moved)
	}
	if err := a.loadIdentity(); err != nil {
		return nil, err
	}
	if cfg.Transport != nil {
		if a.server, err = cfg.Transport(a); err != nil {
			return nil, fmt.Errorf("connecting to the server: %w", err)
		}
	} else {
		a.server = NewHTTPSTransport(cfg.ServerURL, cfg.Roots, a)
	}
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
	if a.server != nil {
		errs = append(errs, a.server.Close())
		a.server = nil
	}
	return errors.Join(errs...)
}

// DeviceID is the hex SHA-256 of the EK public key (PKIX DER).
func (a *Agent) DeviceID() string {
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	return a.deviceID
}

// loadEK reads the EK, preferring one with a manufacturer certificate, and
// derives the device ID. Callers hold tpmMu (or own the agent exclusively).
func (a *Agent) loadEK() error {
	if a.ek != nil {
		return nil
	}
	// EKs() only knows the RSA EK (NV 0x01c00002, handle 0x81010001): on a
	// TPM whose certificate is for its ECC P-256 EK (NV 0x01c0000a, handle
	// 0x81010002) it returns an RSA EK without a certificate.
	// EKCertificates() returns every EK that has a certificate, RSA first,
	// so an RSA device keeps its device ID; EKs() stays the fallback.
	eks, certErr := a.tpm.EKCertificates()
	if certErr != nil || len(eks) == 0 {
		var err error
		if eks, err = a.tpm.EKs(); err != nil {
			return fmt.Errorf("reading endorsement keys: %w", errors.Join(err, certErr))
		}
	}
	if len(eks) == 0 {
		return errors.New("the TPM reports no endorsement key")
	}
	ek := eks[0]
	for _, e := range eks {
		if e.Certificate != nil {
			ek = e
			break
		}
	}
	der, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		return fmt.Errorf("encoding EK public key: %w", err)
	}
	sum := sha256.Sum256(der)
	a.ek, a.ekDER, a.deviceID = &ek, der, hex.EncodeToString(sum[:])
	return nil
}

// loadIdentity loads the AK and TPM key from the cache, or creates both
// and stores their TPM-wrapped blobs in one write. Blobs the TPM refuses
// (after a TPM clear) are replaced: the device's identity is its EK, and a
// new AK and key are attested afresh at the next enrollment.
func (a *Agent) loadIdentity() error {
	id, err := a.cache.Identity()
	switch {
	case err == nil:
		if err := a.loadBlobs(id); err == nil {
			a.deviceID = id.DeviceID
			return nil
		} else {
			a.log.Warn("the TPM refused the cached AK or key (TPM cleared?); creating new ones", "device_id", id.DeviceID, "err", err)
		}
	case !errors.Is(err, cache.ErrNotFound):
		return err
	}
	return a.newIdentity()
}

// newIdentity creates a fresh AK and TPM key. Callers hold tpmMu (or own
// the agent exclusively).
func (a *Agent) newIdentity() error {
	if err := a.loadEK(); err != nil {
		return err
	}
	if a.key != nil {
		a.key.Close()
		a.key = nil
	}
	if a.ak != nil {
		a.ak.Close(a.tpm)
		a.ak = nil
	}
	var err error
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
	if err := a.cache.PutIdentity(&cache.Identity{DeviceID: a.deviceID, AKBlob: akBlob, KeyBlob: keyBlob}); err != nil {
		return err
	}
	// A session begun with the old AK cannot be answered with this one.
	if err := a.cache.ClearPendingSession(); err != nil {
		return err
	}
	a.log.Info("created TPM identity", "phase", "identity", "device_id", a.deviceID)
	return nil
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

// ensureEK reads the EK before an enrollment and checks the cached
// identity belongs to it; if it does not (a cache copied from another
// device), it makes a new identity. Callers hold tpmMu.
func (a *Agent) ensureEK() error {
	cached := a.deviceID
	if err := a.loadEK(); err != nil {
		return err
	}
	if cached != a.deviceID {
		a.log.Warn("cached identity belongs to another TPM; creating a new one", "cached_device_id", cached, "device_id", a.deviceID)
		return a.newIdentity()
	}
	return nil
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
	if len(e.CertificateChain) == 0 {
		return nil, errors.New("the cached enrollment has no certificate; enroll again")
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

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
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
