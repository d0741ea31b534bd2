package device

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"path/filepath"
	"slices"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device/cache"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/sealing"
)

// Result is a completed enrollment, as stored in the cache.
type Result struct {
	DeviceID string
	Leaf     *x509.Certificate
	// Chain is the verified chain, leaf first, root excluded.
	Chain  []*x509.Certificate
	Bundle *pki.Bundle
	// BundleAccepted is false when the server sent a bundle older than the
	// one stored: the stored one was kept (rollback protection).
	BundleAccepted bool
	CorrelationID  string
}

// RetryPolicy bounds Enroll's retries of transient failures.
type RetryPolicy struct {
	// Attempts is the total number of attempts; 0 means unlimited (until
	// ctx ends).
	Attempts int
	Base     time.Duration // first backoff cap
	Max      time.Duration // backoff cap
}

// DefaultRetryPolicy retries for about a minute.
var DefaultRetryPolicy = RetryPolicy{Attempts: 8, Base: 500 * time.Millisecond, Max: 15 * time.Second}

// backoff returns the wait before attempt n+1 (n >= 1): full jitter over an
// exponentially growing cap, never less than the server's Retry-After.
func (p RetryPolicy) backoff(n int, retryAfter time.Duration) time.Duration {
	ceiling := p.Max
	if n < 32 && p.Base<<(n-1) < p.Max && p.Base<<(n-1) > 0 {
		ceiling = p.Base << (n - 1)
	}
	return max(time.Duration(mrand.Int64N(int64(ceiling)+1)), min(retryAfter, MaxRetryAfter))
}

// Enroll runs begin → activate → quote + certify → finish, retrying
// transient failures with exponential backoff and full jitter, honouring
// the server's Retry-After. A permanent refusal returns at once.
func (a *Agent) Enroll(ctx context.Context, p RetryPolicy) (*Result, error) {
	for attempt := 1; ; attempt++ {
		res, err := a.enrollOnce(ctx)
		if err == nil {
			return res, nil
		}
		a.metrics.errors.WithLabelValues(errorCode(err)).Inc()
		var te *TransientError
		if !errors.As(err, &te) || (p.Attempts > 0 && attempt >= p.Attempts) || ctx.Err() != nil {
			return nil, err
		}
		wait := p.backoff(attempt, te.RetryAfter)
		a.metrics.retries.Inc()
		a.log.Warn("enrollment attempt failed; retrying", "attempt", attempt, "wait", wait.String(), "code", errorCode(err), "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("enrollment: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

func (a *Agent) enrollOnce(ctx context.Context) (*Result, error) {
	a.tpmMu.Lock()
	err := a.ensureEK()
	a.tpmMu.Unlock()
	if err != nil {
		return nil, err
	}
	start := a.cfg.Now()

	// Resume a session begun before a restart or a lost response, if it
	// is still alive; otherwise begin anew.
	pending, err := a.resumeOrBegin(ctx)
	if err != nil {
		return nil, err
	}
	corr := pending.CorrelationID
	var br api.BeginResponse
	if err := json.Unmarshal(pending.Begin, &br); err != nil {
		a.cache.ClearPendingSession()
		return nil, fmt.Errorf("cached session: %w", err)
	}
	log := a.log.With("correlation_id", corr, "device_id", a.deviceID, "session_id", br.SessionID)

	// Activate, quote and sign the CSR in the TPM, once per session: a
	// retry resends the same answer.
	var (
		finish  api.FinishRequest
		sealKey []byte // known once the TPM activated the credential
	)
	if len(pending.Finish) > 0 {
		if err := json.Unmarshal(pending.Finish, &finish); err != nil {
			a.cache.ClearPendingSession()
			return nil, fmt.Errorf("cached answer: %w", err)
		}
	} else {
		f, key, err := a.answer(&br)
		sealKey = key
		if err != nil {
			// A challenge this TPM cannot answer will not improve on
			// retry of the same session.
			a.cache.ClearPendingSession()
			return nil, err
		}
		finish = *f
		pending.Finish, _ = json.Marshal(f)
		if err := a.cache.PutPendingSession(pending); err != nil {
			return nil, fmt.Errorf("recording answer: %w", err)
		}
		log.Info("challenge answered", "phase", "activate")
	}

	fr, err := withTimeout(ctx, a.cfg.RequestTimeout, func(ctx context.Context) (*api.FinishResponse, error) {
		return a.server.Finish(ctx, corr, &finish, func() ([]byte, error) {
			if sealKey != nil {
				return sealKey, nil
			}
			return a.sessionSealKey(&br) // a resumed session: activate again
		})
	})
	if err != nil {
		// Keep the session for a resend only when the answer may not
		// have arrived (network, 5xx, busy); otherwise start over.
		if !IsTransient(err) || errors.Is(err, &api.Error{Code: api.CodeNonceUnknownOrUsed}) {
			a.cache.ClearPendingSession()
		}
		return nil, fmt.Errorf("finish: %w", err)
	}

	// Trust nothing in the answer before it verifies against the root.
	res, err := a.verifyFinish(fr)
	if err != nil {
		a.cache.ClearPendingSession()
		return nil, fmt.Errorf("verifying server response: %w", err)
	}
	res.CorrelationID = corr
	res.BundleAccepted, err = a.cache.PutEnrollment(&cache.Enrollment{
		DeviceID:         a.deviceID,
		CertificateChain: fr.CertificateChain,
		NotAfter:         res.Leaf.NotAfter,
		Bundle:           fr.Bundle,
		BundleVersion:    res.Bundle.Version,
		EnrolledAt:       a.cfg.Now(),
	})
	if err != nil {
		return nil, fmt.Errorf("storing enrollment: %w", err)
	}
	if o, ok := a.server.(certificateObserver); ok {
		o.CertificateChanged()
	}
	if !res.BundleAccepted {
		log.Warn("server sent an older config bundle than the one stored; kept the stored one", "offered_version", res.Bundle.Version)
	}
	log.Info("enrolled", "phase", "finish", "cert_serial", res.Leaf.SerialNumber.Text(16),
		"not_after", res.Leaf.NotAfter, "bundle_version", res.Bundle.Version, "duration", a.cfg.Now().Sub(start).String())
	return res, nil
}

// resumeOrBegin returns the pending session from the cache if it has time
// left, or begins a new one and records it.
func (a *Agent) resumeOrBegin(ctx context.Context) (*cache.PendingSession, error) {
	if p, err := a.cache.PendingSession(); err == nil && a.cfg.Now().Add(5*time.Second).Before(p.ExpiresAt) {
		var br api.BeginResponse
		if err := json.Unmarshal(p.Begin, &br); err == nil && br.Validate() == nil && br.DeviceID == a.deviceID {
			a.log.Info("resuming enrollment begun earlier", "phase", "resume", "correlation_id", p.CorrelationID, "session_id", br.SessionID, "answered", len(p.Finish) > 0)
			return p, nil
		}
	}
	corr := newCorrelationID()
	a.tpmMu.Lock()
	begin := api.BeginRequest{
		EKPublic: a.ekDER,
		AK:       apiAKParams(a.ak.AttestationParameters()),
		Device:   api.DeviceInfo{Hostname: a.cfg.Hostname, AgentVersion: Version},
	}
	if a.ek.Certificate != nil {
		begin.EKCertificate = a.ek.Certificate.Raw
	}
	a.tpmMu.Unlock()
	br, err := withTimeout(ctx, a.cfg.RequestTimeout, func(ctx context.Context) (*api.BeginResponse, error) {
		return a.server.Begin(ctx, corr, &begin)
	})
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	// Nothing of an answer that does not have the protocol's shape is
	// kept or reaches the TPM; asking again may get a good one.
	if err := br.Validate(); err != nil {
		return nil, &TransientError{Err: fmt.Errorf("begin: the server's answer: %w", err)}
	}
	if br.DeviceID != a.deviceID {
		return nil, fmt.Errorf("begin: server computed device ID %s, this TPM is %s", br.DeviceID, a.deviceID)
	}
	raw, _ := json.Marshal(br)
	p := &cache.PendingSession{CorrelationID: corr, Begin: raw, ExpiresAt: br.ExpiresAt}
	if err := a.cache.PutPendingSession(p); err != nil {
		return nil, fmt.Errorf("recording session: %w", err)
	}
	a.log.Info("enrollment begun", "phase", "begin", "correlation_id", corr, "device_id", a.deviceID, "session_id", br.SessionID)
	return p, nil
}

// withTimeout runs one request under its own deadline.
func withTimeout[T any](ctx context.Context, d time.Duration, fn func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return fn(ctx)
}

// sessionSealKey recovers the session's activation secret in the TPM again
// and derives its sealing key.
func (a *Agent) sessionSealKey(br *api.BeginResponse) ([]byte, error) {
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	secret, err := a.activate(br)
	if err != nil {
		return nil, err
	}
	return sealing.Key(secret, br.SessionID)
}

// activate runs TPM2_ActivateCredential on the server's challenge. Callers
// hold tpmMu.
func (a *Agent) activate(br *api.BeginResponse) ([]byte, error) {
	// WithEK: the EK loadEK chose, RSA or ECC; ActivateCredential alone
	// always uses the RSA EK handle.
	secret, err := a.ak.ActivateCredentialWithEK(a.tpm, goattest.EncryptedCredential{
		Credential: br.Challenge.Credential,
		Secret:     br.Challenge.Secret,
	}, *a.ek)
	if err != nil {
		return nil, fmt.Errorf("activating credential: %w", err)
	}
	return secret, nil
}

// answer runs the TPM half of the protocol. It also returns the session's
// sealing key for transports that need it.
func (a *Agent) answer(br *api.BeginResponse) (*api.FinishRequest, []byte, error) {
	a.tpmMu.Lock()
	defer a.tpmMu.Unlock()
	if err := br.Validate(); err != nil {
		return nil, nil, fmt.Errorf("the server's begin answer: %w", err)
	}
	secret, err := a.activate(br)
	if err != nil {
		return nil, nil, err
	}
	sealKey, err := sealing.Key(secret, br.SessionID)
	if err != nil {
		return nil, nil, err
	}
	quote, err := a.ak.QuotePCRs(a.tpm, br.Nonce, goattest.HashSHA256, br.PCRs)
	if err != nil {
		return nil, nil, fmt.Errorf("quoting PCRs %v: %w", br.PCRs, err)
	}
	all, err := a.tpm.PCRs(goattest.HashSHA256)
	if err != nil {
		return nil, nil, fmt.Errorf("reading PCRs: %w", err)
	}
	var pcrs []api.PCR
	for _, p := range all {
		if slices.Contains(br.PCRs, p.Index) {
			pcrs = append(pcrs, api.PCR{Index: p.Index, Digest: p.Digest})
		}
	}
	signer, err := a.keySigner()
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: a.deviceID},
	}, lockedSigner{signer: signer}) // tpmMu is held here already
	if err != nil {
		return nil, nil, fmt.Errorf("signing CSR with the TPM key: %w", err)
	}
	eventLog, err := a.channel.MeasurementLog()
	if err != nil {
		return nil, nil, fmt.Errorf("reading the firmware event log: %w", err)
	}
	if len(eventLog) > api.MaxEventLogBytes {
		return nil, nil, fmt.Errorf("firmware event log is %d bytes, the protocol carries at most %d", len(eventLog), api.MaxEventLogBytes)
	}
	cp := a.key.CertificationParameters()
	return &api.FinishRequest{
		EventLog:        eventLog,
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
	}, sealKey, nil
}

// verifyFinish checks the certificate chain and bundle the server sent.
func (a *Agent) verifyFinish(fr *api.FinishResponse) (*Result, error) {
	chain, err := a.verifyChain(fr.CertificateChain, a.cfg.Now())
	if err != nil {
		return nil, err
	}
	b, err := pki.VerifyBundle(fr.Bundle, a.cfg.Roots, a.deviceID, a.cfg.Now())
	if err != nil {
		return nil, fmt.Errorf("config bundle: %w", err)
	}
	return &Result{DeviceID: a.deviceID, Leaf: chain[0], Chain: chain, Bundle: b}, nil
}

// verifyChain checks the chain leads to the root with client-auth use at
// now, names this device, and certifies the TPM key.
func (a *Agent) verifyChain(chain [][]byte, now time.Time) ([]*x509.Certificate, error) {
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
	// A device clock up to pki.BundleClockSkew behind the server's would
	// find the certificate the server just issued not yet valid (it is
	// backdated by only pki.Backdate).
	if _, err := pki.VerifyWithClockSkew(now, func(at time.Time) ([][]*x509.Certificate, error) {
		return leaf.Verify(x509.VerifyOptions{
			Roots: a.cfg.Roots, Intermediates: inter, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
	}); err != nil {
		return nil, fmt.Errorf("device certificate does not chain to the enrollment root: %w", err)
	}
	id, err := pki.DeviceIDFromCertificate(leaf, a.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("device certificate: %w", err)
	}
	a.tpmMu.Lock()
	deviceID, keyPub := a.deviceID, a.key.Public()
	a.tpmMu.Unlock()
	if id != deviceID {
		return nil, fmt.Errorf("device certificate names device %s, this TPM is %s", id, deviceID)
	}
	if !publicKeysEqual(leaf.PublicKey, keyPub) {
		return nil, errors.New("device certificate is for a key other than this TPM's key")
	}
	return certs, nil
}

// State is what the cache says about the device's readiness.
type State struct {
	DeviceID      string
	Ready         bool
	Leaf          *x509.Certificate // nil if none is cached
	Bundle        *pki.Bundle       // nil if none verifies
	BundleVersion uint64
	// Reason says why the device is not ready.
	Reason string
}

// CachedState verifies the cached certificate and bundle at now without
// any network: the device is ready when the chain verifies, names this
// device, carries the TPM key, and the bundle's signature verifies.
func (a *Agent) CachedState(now time.Time) *State {
	a.tpmMu.Lock()
	st := &State{DeviceID: a.deviceID}
	a.tpmMu.Unlock()
	e, err := a.cache.Enrollment()
	if err != nil {
		st.Reason = "not enrolled yet"
		return st
	}
	chain, err := a.verifyChain(e.CertificateChain, now)
	if err != nil {
		st.Reason = "cached certificate: " + err.Error()
		if len(e.CertificateChain) > 0 {
			if c, perr := x509.ParseCertificate(e.CertificateChain[0]); perr == nil {
				st.Leaf = c
			}
		}
		return st
	}
	st.Leaf = chain[0]
	b, err := pki.VerifyBundle(e.Bundle, a.cfg.Roots, st.DeviceID, now)
	if err != nil {
		st.Reason = "cached config bundle: " + err.Error()
		return st
	}
	st.Bundle, st.BundleVersion, st.Ready = b, b.Version, true
	return st
}

// Enrollment returns the cached enrollment.
func (a *Agent) Enrollment() (*cache.Enrollment, error) { return a.cache.Enrollment() }

// Whoami calls the server over mTLS with the TPM-backed certificate.
func (a *Agent) Whoami(ctx context.Context) (*api.WhoamiResponse, error) {
	return withTimeout(ctx, a.cfg.RequestTimeout, func(ctx context.Context) (*api.WhoamiResponse, error) {
		return a.server.Whoami(ctx, newCorrelationID())
	})
}

func apiAKParams(p goattest.AttestationParameters) api.AttestationParameters {
	return api.AttestationParameters{
		Public:            p.Public,
		CreateData:        p.CreateData,
		CreateAttestation: p.CreateAttestation,
		CreateSignature:   p.CreateSignature,
	}
}

func newCorrelationID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// errorCode names an error for metrics and status: its protocol code, or
// "network" / "local".
func errorCode(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return string(ae.Code)
	}
	if IsTransient(err) {
		return "network"
	}
	return "local"
}

// ApplyBundle verifies a pushed config bundle against the enrollment root
// for this device and stores it under the rollback rule (its version must
// not be below the highest stored). It returns whether it was taken.
func (a *Agent) ApplyBundle(compact string) (*pki.Bundle, bool, error) {
	b, err := pki.VerifyBundle(compact, a.cfg.Roots, a.DeviceID(), a.cfg.Now())
	if err != nil {
		return nil, false, fmt.Errorf("pushed config bundle: %w", err)
	}
	ok, err := a.cache.PutBundle(compact, b.Version)
	if err != nil {
		return nil, false, fmt.Errorf("storing pushed bundle: %w", err)
	}
	return b, ok, nil
}

// ExportFiles writes the cached certificate chain (PEM) and the verified
// config payload into dir as device.crt and config.json, for other programs
// on the device. The key stays in the TPM.
func (a *Agent) ExportFiles(dir string) (certPath, configPath string, err error) {
	e, err := a.cache.Enrollment()
	if err != nil {
		return "", "", err
	}
	b, err := pki.VerifyBundle(e.Bundle, a.cfg.Roots, e.DeviceID, a.cfg.Now())
	if err != nil {
		return "", "", fmt.Errorf("cached config bundle: %w", err)
	}
	var chain []byte
	for _, der := range e.CertificateChain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	certPath, configPath = filepath.Join(dir, "device.crt"), filepath.Join(dir, "config.json")
	if err := atomicfile.Write(certPath, chain, 0o644); err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(configPath, b.Config, 0o644); err != nil {
		return "", "", err
	}
	return certPath, configPath, nil
}
