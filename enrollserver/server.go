package enrollserver

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	goattest "github.com/google/go-attestation/attest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/attest"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/firmware"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/sealing"
)

// DefaultPCRs are the SHA-256 PCRs every enrollment quotes: the firmware
// and boot-loader measurements of the TCG PC Client profile (0-7), and the
// PCRs a shim + GRUB boot measures into through the firmware, so that they
// appear in the same event log: GRUB's commands (8) and files (9), shim's
// MOK state (14). Measured boot refuses a log that measures a PCR the
// quote left out, so a real Linux device needs them quoted. PCRs extended
// after boot without an entry in the firmware's log (IMA's 10, systemd's
// 11-13 after the stub) stay out.
var DefaultPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}

// DefaultBundleLifetime is how long a signed config bundle stays valid.
const DefaultBundleLifetime = 30 * 24 * time.Hour

// BundleSource supplies the config a device receives.
type BundleSource interface {
	// Bundle returns the current config version and payload (a JSON
	// object) for dev.
	Bundle(ctx context.Context, dev *store.Device) (version uint64, config json.RawMessage, err error)
}

// StaticBundle gives every device the same config.
type StaticBundle struct {
	Version uint64
	Config  json.RawMessage
}

// Bundle implements BundleSource.
func (b StaticBundle) Bundle(context.Context, *store.Device) (uint64, json.RawMessage, error) {
	return b.Version, b.Config, nil
}

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	Store store.Store
	// CA signs config bundles and, unless Issuer is set, device
	// certificates.
	CA     *pki.CA
	Issuer pki.Issuer
	// ManufacturerRoots are the TPM vendors' EK roots. nil trusts no EK
	// certificate: only pre-registered devices enroll.
	// New keeps its own copies: adding to these pools afterwards has no
	// effect, as the server remembers verdicts made against them.
	ManufacturerRoots         *x509.CertPool
	ManufacturerIntermediates *x509.CertPool
	// LeafLifetime of device certificates; 0 means pki.DefaultLeafLifetime.
	LeafLifetime time.Duration
	// SessionTTL bounds begin → finish; 0 means api.DefaultSessionTTL.
	SessionTTL time.Duration
	// PCRs to quote; nil means DefaultPCRs. They must include the
	// firmware PCRs 0-7; a group's required PCRs are added per session.
	PCRs []int
	// Bundles supplies the default config: what a device gets when no
	// config version is stored for it or its group (see SetConfig); nil
	// means an empty config at version 1. Stored versions always number
	// above its version.
	Bundles        BundleSource
	BundleLifetime time.Duration

	// DefaultGroup is the group of devices not pre-registered into one;
	// "" means "default".
	DefaultGroup string
	// DefaultAdmission applies to groups without a record: api.AdmissionAuto
	// (the default), AdmissionManual or AdmissionDeny.
	DefaultAdmission string
	// OpenMode lets a device that is neither pre-registered nor chained
	// to a trusted manufacturer root wait in the pending list for an
	// operator. The default (false) is closed mode: such a device is
	// refused and leaves no record, so strangers cannot fill the list.
	OpenMode bool
	// MaxPending caps pending records; 0 means api.DefaultMaxPending.
	MaxPending int
	// PendingTTL is how long a pending record waits for a decision; 0
	// means api.DefaultPendingTTL.
	PendingTTL time.Duration
	// PendingRetryAfter is the Retry-After given to a pending device; 0
	// means api.DefaultPendingRetryAfter.
	PendingRetryAfter time.Duration
	// CRLLifetime is the interval between thisUpdate and nextUpdate of the
	// revocation list; 0 means DefaultCRLLifetime. RefreshCRL must run
	// more often (the daemon runs it every CRLLifetime/4).
	CRLLifetime time.Duration
	// OnCRL, if set, receives every newly signed set of CRLs (DER, one per
	// issuer: the intermediate in service's first, then those of retired
	// intermediates, see pki.CA.SignCRLs), such as to publish them as
	// files. An error is logged, not fatal.
	OnCRL func(crls [][]byte) error
	// ReplayCacheSize bounds the verified event-log replays remembered
	// for devices that send the same log against the same PCR values
	// again (see replayCache); 0 means DefaultReplayCacheSize, a
	// negative value remembers none.
	ReplayCacheSize int
	// VerdictMemoSize bounds the EK certificate and AK creation verdicts
	// remembered, each, for devices that attest again with the same
	// evidence (see verifications.go); 0 means DefaultVerdictMemoSize, a
	// negative value remembers none.
	VerdictMemoSize int
	// AuditRefusalsPerSecond bounds audit records of refused calls (a
	// token bucket with a burst of ten seconds' worth), for devices and,
	// in a bucket of their own, for admin calls by anyone but an
	// operator (an operator's refusals are always recorded); 0 means
	// DefaultAuditRefusalsPerSecond. Refusals beyond it are counted in
	// edgeenroll_audit_suppressed_total, not recorded.
	AuditRefusalsPerSecond float64
	Logger                 *slog.Logger
	// Registerer receives the metrics; nil means a private registry.
	Registerer prometheus.Registerer
	Now        func() time.Time
	Rand       io.Reader
}

// Server is the enrollment state machine. It is safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	seal    *sealKeys
	// configWatchers hear about every new config version (push).
	configWatchers configWatchers
	// followingConfigs is set while FollowConfigChanges relays a shared
	// store's config versions; local puts then leave notifying to it.
	followingConfigs atomic.Bool
	finish           singleflight.Group
	crl              crlState
	// refusal bounds the audit records of refused devices;
	// adminRefusal those of admin calls refused to anyone but an operator.
	refusal, adminRefusal *tokenBucket
	replays               *replayCache
	ekVerdicts            *memo[ekVerdict]
	akVerdicts            *memo[*attest.AKPublic]
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	var errs []error
	if cfg.Store == nil {
		errs = append(errs, errors.New("Store is required"))
	}
	if cfg.CA == nil {
		errs = append(errs, errors.New("CA is required"))
	}
	if cfg.Issuer == nil && cfg.CA != nil {
		cfg.Issuer = cfg.CA
	}
	if cfg.LeafLifetime == 0 {
		cfg.LeafLifetime = pki.DefaultLeafLifetime
	}
	if cfg.LeafLifetime < pki.MinLeafLifetime || cfg.LeafLifetime > pki.MaxLeafLifetime {
		errs = append(errs, fmt.Errorf("LeafLifetime %s is outside [%s, %s]", cfg.LeafLifetime, pki.MinLeafLifetime, pki.MaxLeafLifetime))
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = api.DefaultSessionTTL
	}
	if cfg.SessionTTL < time.Second || cfg.SessionTTL > time.Hour {
		errs = append(errs, fmt.Errorf("SessionTTL %s is outside [1s, 1h]", cfg.SessionTTL))
	}
	if cfg.PCRs == nil {
		cfg.PCRs = DefaultPCRs
	}
	cfg.PCRs = slices.Clone(cfg.PCRs)
	slices.Sort(cfg.PCRs)
	cfg.PCRs = slices.Compact(cfg.PCRs)
	for _, p := range cfg.PCRs {
		if p < 0 || p >= api.MaxPCRs {
			errs = append(errs, fmt.Errorf("PCR %d is outside 0..%d", p, api.MaxPCRs-1))
		}
	}
	for _, p := range FirmwarePCRs {
		if !slices.Contains(cfg.PCRs, p) {
			errs = append(errs, fmt.Errorf("PCRs %v leave out PCR %d: measured boot needs the firmware PCRs 0-7 quoted", cfg.PCRs, p))
			break
		}
	}
	if cfg.Bundles == nil {
		cfg.Bundles = StaticBundle{Version: 1, Config: json.RawMessage(`{}`)}
	}
	if cfg.BundleLifetime == 0 {
		cfg.BundleLifetime = DefaultBundleLifetime
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.DefaultGroup == "" {
		cfg.DefaultGroup = DefaultGroupName
	}
	if err := api.ValidateGroupName(cfg.DefaultGroup); err != nil {
		errs = append(errs, fmt.Errorf("DefaultGroup: %w", err))
	}
	if cfg.DefaultAdmission == "" {
		cfg.DefaultAdmission = api.AdmissionAuto
	}
	switch cfg.DefaultAdmission {
	case api.AdmissionAuto, api.AdmissionManual, api.AdmissionDeny:
	default:
		errs = append(errs, fmt.Errorf("DefaultAdmission %q must be auto, manual or deny", cfg.DefaultAdmission))
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = api.DefaultMaxPending
	}
	if cfg.MaxPending < 1 || cfg.MaxPending > MaxPendingCap {
		errs = append(errs, fmt.Errorf("MaxPending %d is outside [1, %d]", cfg.MaxPending, MaxPendingCap))
	}
	if cfg.PendingTTL == 0 {
		cfg.PendingTTL = api.DefaultPendingTTL
	}
	if cfg.PendingTTL < time.Minute || cfg.PendingTTL > MaxPendingTTL {
		errs = append(errs, fmt.Errorf("PendingTTL %s is outside [1m, %s]", cfg.PendingTTL, MaxPendingTTL))
	}
	if cfg.PendingRetryAfter == 0 {
		cfg.PendingRetryAfter = api.DefaultPendingRetryAfter
	}
	if cfg.PendingRetryAfter < time.Second || cfg.PendingRetryAfter > time.Hour {
		errs = append(errs, fmt.Errorf("PendingRetryAfter %s is outside [1s, 1h]", cfg.PendingRetryAfter))
	}
	if cfg.CRLLifetime == 0 {
		cfg.CRLLifetime = DefaultCRLLifetime
	}
	if cfg.CRLLifetime < MinCRLLifetime || cfg.CRLLifetime > MaxCRLLifetime {
		errs = append(errs, fmt.Errorf("CRLLifetime %s is outside [%s, %s]", cfg.CRLLifetime, MinCRLLifetime, MaxCRLLifetime))
	}
	if cfg.AuditRefusalsPerSecond == 0 {
		cfg.AuditRefusalsPerSecond = DefaultAuditRefusalsPerSecond
	}
	if cfg.ReplayCacheSize == 0 {
		cfg.ReplayCacheSize = DefaultReplayCacheSize
	}
	if cfg.ManufacturerRoots != nil {
		cfg.ManufacturerRoots = cfg.ManufacturerRoots.Clone()
	}
	if cfg.ManufacturerIntermediates != nil {
		cfg.ManufacturerIntermediates = cfg.ManufacturerIntermediates.Clone()
	}
	if cfg.VerdictMemoSize == 0 {
		cfg.VerdictMemoSize = DefaultVerdictMemoSize
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("enrollserver config: %w", errors.Join(errs...))
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: m, seal: newSealKeys(),
		refusal:      newTokenBucket(cfg.AuditRefusalsPerSecond, 10*cfg.AuditRefusalsPerSecond, cfg.Now),
		adminRefusal: newTokenBucket(cfg.AuditRefusalsPerSecond, 10*cfg.AuditRefusalsPerSecond, cfg.Now),
		replays:      newMemo[*firmware.Measurements](cfg.ReplayCacheSize),
		ekVerdicts:   newMemo[ekVerdict](cfg.VerdictMemoSize),
		akVerdicts:   newMemo[*attest.AKPublic](cfg.VerdictMemoSize)}
	if err := m.registerStoreGauges(cfg.Registerer, cfg.Store); err != nil {
		return nil, fmt.Errorf("registering metrics: %w", err)
	}
	return s, nil
}

// Begin verifies who the device claims to be and challenges its TPM. The
// request must have passed api validation. Refusals are *api.Error.
func (s *Server) Begin(ctx context.Context, corr string, req *api.BeginRequest) (*api.BeginResponse, error) {
	return s.beginOver(ctx, corr, req, false)
}

// BeginSealed is Begin for a transport that seals the finish answer to the
// device (MQTT, whose broker could read it): the session is then finished
// only through FinishSealed, so that its finish request, which the broker
// sees, cannot fetch the answer unsealed over HTTPS.
func (s *Server) BeginSealed(ctx context.Context, corr string, req *api.BeginRequest) (*api.BeginResponse, error) {
	return s.beginOver(ctx, corr, req, true)
}

func (s *Server) beginOver(ctx context.Context, corr string, req *api.BeginRequest, sealed bool) (*api.BeginResponse, error) {
	var renewal bool
	resp, err := s.begin(ctx, corr, req, &renewal, sealed)
	outcome, code := outcomeOf(err)
	s.metrics.begins.WithLabelValues(outcome, code).Inc()
	if renewal {
		s.metrics.renewals.WithLabelValues(outcome).Inc()
	}
	if err != nil {
		s.log.LogAttrs(ctx, levelOf(outcome), "begin refused", slog.String("correlation_id", corr), slog.String("code", code), slog.String("err", err.Error()))
	}
	return resp, err
}

func (s *Server) begin(ctx context.Context, corr string, req *api.BeginRequest, renewal *bool, sealed bool) (*api.BeginResponse, error) {
	now := s.cfg.Now()

	// 1. The EK public key and the device ID derived from it.
	ekPub, err := attest.ParseEKPublic(req.EKPublic)
	if err != nil {
		return nil, s.refuse(err)
	}
	deviceID, err := attest.DeviceID(ekPub)
	if err != nil {
		return nil, s.refuse(err)
	}
	// Each begin makes a session that lives until its TTL: the device's
	// own budget bounds how many one replayed (public) EK certificate can
	// hold, so that it cannot fill the table for every other device.
	if wait := admission.ChargeDevice(ctx, deviceID); wait > 0 {
		return nil, &api.Error{Code: api.CodeBusy, RetryAfterSeconds: max(1, int((wait+time.Second-1)/time.Second)),
			Message: fmt.Sprintf("device %s begins too often; retry after retry_after_seconds", deviceID)}
	}

	// 2. Admission: a certificate chaining to a manufacturer root or a
	// factory pre-registration of this EK, then the device's record and
	// its group's policy (see admit).
	sess := &store.Session{DeviceID: deviceID, CorrelationID: corr, EKPublic: req.EKPublic, Sealed: sealed,
		Device: store.DeviceInfo{Hostname: req.Device.Hostname, AgentVersion: req.Device.AgentVersion}}
	if err := s.admit(ctx, sess, req, ekPub, now, renewal); err != nil {
		return nil, err
	}

	// 3. The AK must be a restricted TPM key; MakeCredential binds the
	// challenge to the AK's name under this EK, so only the TPM holding
	// both can answer it.
	akParams := goattest.AttestationParameters{
		Public:            req.AK.Public,
		CreateData:        req.AK.CreateData,
		CreateAttestation: req.AK.CreateAttestation,
		CreateSignature:   req.AK.CreateSignature,
	}
	ak, secret, ec, err := s.newActivationChallenge(ekPub, akParams)
	if err != nil {
		return nil, s.refuse(err)
	}

	// 4. A fresh session: random ID and nonce; the store keeps only a hash
	// of the expected activation proof, never the secret.
	sess.ID, err = s.randomHex(api.SessionIDLen / 2)
	if err != nil {
		return nil, err
	}
	sess.Nonce = make([]byte, api.NonceSize)
	if _, err := io.ReadFull(s.cfg.Rand, sess.Nonce); err != nil {
		return nil, fmt.Errorf("generating nonce: %w", err)
	}
	proof := api.ActivationProof(secret, sess.ID)
	proofHash := sha256.Sum256(proof)
	sess.ProofHash = proofHash[:]
	// The key that seals this session's answer through a broker (MQTT)
	// stays in memory only.
	sealKey, err := sealing.Key(secret, sess.ID)
	if err != nil {
		return nil, err
	}
	sess.AKPublic = ak.TPMPublic // the public area verified, as its bytes
	sess.PCRs = s.quotePCRs(sess.RequiredPCRs)
	sess.CreatedAt = now
	sess.ExpiresAt = now.Add(s.cfg.SessionTTL)
	if err := s.cfg.Store.CreateSession(ctx, sess); errors.Is(err, store.ErrTooManySessions) {
		return nil, &api.Error{Code: api.CodeBusy, Message: "too many enrollments in progress; retry after retry_after_seconds",
			RetryAfterSeconds: sessionsFullRetryAfter}
	} else if err != nil {
		return nil, fmt.Errorf("storing session: %w", err)
	}
	s.seal.put(sess.ID, sealKey, sess.ExpiresAt, now)
	s.log.LogAttrs(ctx, slog.LevelInfo, "enrollment begun", slog.String("correlation_id", corr),
		slog.String("device_id", deviceID), slog.String("session_id", sess.ID), slog.String("admission", string(sess.Admission)))
	return &api.BeginResponse{
		SessionID: sess.ID,
		DeviceID:  deviceID,
		Challenge: api.EncryptedCredential{Credential: ec.Credential, Secret: ec.Secret},
		Nonce:     sess.Nonce,
		PCRs:      sess.PCRs,
		ExpiresAt: sess.ExpiresAt,
	}, nil
}

// Finish checks the device's answer to the challenge and, if every step
// holds, issues its certificate and bundle. A repeated identical finish of
// a completed session returns the same result.
func (s *Server) Finish(ctx context.Context, corr string, req *api.FinishRequest) (*api.FinishResponse, error) {
	return s.finishOver(ctx, corr, req, false)
}

// FinishSealed is Finish for a transport that seals the answer to the
// device; a session begun with BeginSealed is finished only through it.
func (s *Server) FinishSealed(ctx context.Context, corr string, req *api.FinishRequest) (*api.FinishResponse, error) {
	return s.finishOver(ctx, corr, req, true)
}

func (s *Server) finishOver(ctx context.Context, corr string, req *api.FinishRequest, sealed bool) (*api.FinishResponse, error) {
	digest, err := requestDigest(req)
	if err != nil {
		return nil, err
	}
	// Concurrent duplicates (a client retrying on a slow link) share one
	// verification and one issuance.
	key := req.SessionID + hex.EncodeToString(digest)
	if sealed {
		key += "/sealed"
	}
	v, err, _ := s.finish.Do(key, func() (any, error) {
		return s.finishOnce(ctx, corr, req, digest, sealed)
	})
	outcome, code := outcomeOf(err)
	s.metrics.enrollments.WithLabelValues(outcome, code).Inc()
	if err != nil {
		s.log.LogAttrs(ctx, levelOf(outcome), "finish refused", slog.String("correlation_id", corr),
			slog.String("session_id", req.SessionID), slog.String("code", code), slog.String("err", err.Error()))
		return nil, err
	}
	return v.(*api.FinishResponse), nil
}

func (s *Server) finishOnce(ctx context.Context, corr string, req *api.FinishRequest, digest []byte, sealed bool) (*api.FinishResponse, error) {
	now := s.cfg.Now()

	// 1. The session: live, unexpired, unused, and finished over a
	// transport that seals its answer if it was begun over one.
	sess, err := s.cfg.Store.Session(ctx, req.SessionID, now)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return s.replayedFinish(ctx, req.SessionID, digest, sealed)
	case errors.Is(err, store.ErrSessionExpired):
		return nil, api.Errorf(api.CodeNonceUnknownOrUsed, "session %s expired; start again with begin", req.SessionID)
	case err != nil:
		return nil, fmt.Errorf("reading session: %w", err)
	}
	if sess.Sealed && !sealed {
		return nil, unsealedFinish(req.SessionID)
	}

	// 2. Credential activation: only the TPM holding the EK could recover
	// the secret bound to this AK.
	got := sha256.Sum256(req.ActivationProof)
	if err := attest.VerifyActivationProof(sess.ProofHash, got[:]); err != nil {
		return nil, s.refuse(err)
	}

	// 3. The quote: signed by the activated AK, over this session's nonce
	// and the PCRs we asked for.
	ak, err := attest.ParseAKPublic(sess.AKPublic)
	if err != nil {
		return nil, s.refuse(err)
	}
	pcrs := make(map[int][]byte, len(req.PCRs))
	for _, p := range req.PCRs {
		pcrs[p.Index] = p.Digest
	}
	verified, err := attest.VerifyQuote(ak, req.Quote.Quote, req.Quote.Signature, pcrs, sess.Nonce, sess.PCRs)
	if err != nil {
		return nil, s.refuse(err)
	}

	// 3b. Measured boot: the event log replays to the verified PCRs and
	// the group's firmware policy accepts it (see checkMeasuredBoot). The
	// device record shows the measurement, refused or not.
	fw, refusal, err := s.checkMeasuredBoot(ctx, sess, req.EventLog, verified, now)
	if err != nil {
		return nil, err
	}
	if refusal != nil {
		s.recordFirmwareRefusal(ctx, sess, fw, refusal)
		return nil, refusal
	}

	// 4. The TPM key: certified by the same AK, so it lives in the same
	// TPM; the CSR must carry exactly that key.
	keyPub, err := attest.VerifyKeyCertification(ak, goattest.CertificationParameters{
		Public:            req.Key.Public,
		CreateAttestation: req.Key.CreateAttestation,
		CreateSignature:   req.Key.CreateSignature,
	})
	if err != nil {
		return nil, s.refuse(err)
	}
	csr, err := attest.VerifyCSR(req.CSR, keyPub)
	if err != nil {
		return nil, s.refuse(err)
	}
	keyDER, err := x509.MarshalPKIXPublicKey(keyPub)
	if err != nil {
		return nil, fmt.Errorf("encoding certified key: %w", err)
	}

	// 5. Issue the certificate and sign the bundle.
	issueStart := time.Now()
	lifetime := s.cfg.LeafLifetime
	if sess.CertLifetime != 0 {
		lifetime = sess.CertLifetime
	}
	issued, err := s.cfg.Issuer.IssueDevice(ctx, pki.DeviceCertRequest{DeviceID: sess.DeviceID, PublicKey: keyPub, Lifetime: lifetime, CSR: csr})
	if err != nil {
		return nil, fmt.Errorf("issuing certificate: %w", err)
	}
	version, config, err := s.deviceBundle(ctx, &store.Device{ID: sess.DeviceID, Serial: sess.Serial, Group: sess.Group, Labels: sess.Labels})
	if err != nil {
		return nil, fmt.Errorf("reading bundle config: %w", err)
	}
	bundle, err := s.cfg.CA.SignBundle(pki.Bundle{DeviceID: sess.DeviceID, Version: version, IssuedAt: now, ExpiresAt: now.Add(s.cfg.BundleLifetime), Config: config})
	if err != nil {
		return nil, fmt.Errorf("signing bundle: %w", err)
	}
	s.metrics.issuance.Observe(time.Since(issueStart).Seconds())
	chain := make([][]byte, len(issued.Chain))
	for i, c := range issued.Chain {
		chain[i] = c.Raw
	}

	// 6. Record the enrollment and consume the session in one transaction.
	// What is left is mostly waiting for the commit's fsyncs, not CPU
	// work: give the admission slot back.
	admission.Yield(ctx)
	serial := issued.Leaf.SerialNumber.Text(16)
	dev, err := s.cfg.Store.FinishEnrollment(ctx, sess.ID, now, &store.IssuedCertificate{
		Serial: serial, DeviceID: sess.DeviceID, SessionID: sess.ID,
		NotBefore: issued.Leaf.NotBefore, NotAfter: issued.Leaf.NotAfter, Renewal: sess.Renewal,
	}, func(prev *store.Device) (*store.Device, *store.AuditRecord, error) {
		// An operator may have decided while the device was attesting.
		if err := finishAllowed(prev, sess); err != nil {
			return nil, nil, err
		}
		d := &store.Device{FirstEnrolledAt: now}
		if prev != nil {
			*d = *prev
			if d.FirstEnrolledAt.IsZero() {
				d.FirstEnrolledAt = now
			}
		}
		d.ID, d.Status, d.Admission = sess.DeviceID, store.StatusEnrolled, sess.Admission
		d.EKPublic, d.AKPublic, d.KeyPublic = sess.EKPublic, sess.AKPublic, keyDER
		d.Serial, d.Group, d.Labels, d.Info = sess.Serial, sess.Group, sess.Labels, sess.Device
		if sess.EKIssuer != "" {
			d.EKIssuer = sess.EKIssuer
		}
		d.CertificateChain, d.CertSerial, d.CertNotAfter = chain, serial, issued.Leaf.NotAfter
		d.Bundle, d.BundleVersion = bundle, version
		d.LastSessionID, d.LastFinishDigest, d.LastFinishSealed = sess.ID, digest, sess.Sealed
		d.PendingSince, d.PendingExpiresAt = time.Time{}, time.Time{}
		d.Enrollments++
		if sess.Renewal {
			d.Renewals++
		}
		d.LastEnrolledAt = now
		if fw != nil {
			d.Firmware = fw
		}
		return d, issueAudit(now, sess, prev, d), nil
	})
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
		return nil, ae
	case errors.Is(err, store.ErrSessionUsed):
		// A concurrent finish with other evidence won the session.
		return nil, api.Errorf(api.CodeNonceUnknownOrUsed, "session %s was already used", sess.ID)
	case errors.Is(err, store.ErrSessionExpired):
		return nil, api.Errorf(api.CodeNonceUnknownOrUsed, "session %s expired; start again with begin", sess.ID)
	case err != nil:
		return nil, fmt.Errorf("recording enrollment: %w", err)
	}
	s.metrics.timeToFinish.Observe(now.Sub(sess.CreatedAt).Seconds())
	s.log.LogAttrs(ctx, slog.LevelInfo, "device enrolled", slog.String("correlation_id", corr),
		slog.String("device_id", dev.ID), slog.String("session_id", sess.ID), slog.String("cert_serial", serial),
		slog.Time("not_after", issued.Leaf.NotAfter), slog.Uint64("bundle_version", version), slog.Int("enrollments", dev.Enrollments))
	return finishResponse(dev), nil
}

// replayedFinish answers a finish whose session is gone: the same request
// again gets the same result; anything else is a reused nonce.
func (s *Server) replayedFinish(ctx context.Context, sessionID string, digest []byte, sealed bool) (*api.FinishResponse, error) {
	refused := api.Errorf(api.CodeNonceUnknownOrUsed, "session %s is unknown or already used; start again with begin", sessionID)
	deviceID, err := s.cfg.Store.CompletedSession(ctx, sessionID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, refused
	} else if err != nil {
		return nil, fmt.Errorf("reading completed session: %w", err)
	}
	dev, err := s.cfg.Store.Device(ctx, deviceID)
	if err != nil {
		return nil, fmt.Errorf("reading device: %w", err)
	}
	if dev.LastSessionID != sessionID || subtle.ConstantTimeCompare(dev.LastFinishDigest, digest) != 1 {
		return nil, refused
	}
	if dev.LastFinishSealed && !sealed {
		return nil, unsealedFinish(sessionID)
	}
	return finishResponse(dev), nil
}

// unsealedFinish refuses the finish of a session begun over a transport
// that seals its answer (MQTT) when it arrives over one that does not
// (HTTPS): whoever saw the finish request on the broker would otherwise
// get the answer in the clear.
func unsealedFinish(sessionID string) error {
	return api.Errorf(api.CodeNonceUnknownOrUsed, "session %s was begun over MQTT, whose answers are sealed to the device: finish it there, or start again with begin", sessionID)
}

func finishResponse(d *store.Device) *api.FinishResponse {
	return &api.FinishResponse{DeviceID: d.ID, CertificateChain: d.CertificateChain, NotAfter: d.CertNotAfter, Bundle: d.Bundle}
}

// Whoami returns the identity of a caller whose TLS client certificate
// already verified against the enrollment root.
func (s *Server) Whoami(ctx context.Context, leaf *x509.Certificate) (*api.WhoamiResponse, error) {
	id, err := pki.DeviceIDFromCertificate(leaf, s.cfg.CA.TrustDomain())
	if err != nil {
		return nil, api.Errorf(api.CodeUnauthenticated, "client certificate is not a device certificate: %v", err)
	}
	serial := leaf.SerialNumber.Text(16)
	rec, err := s.cfg.Store.Certificate(ctx, serial)
	if errors.Is(err, store.ErrNotFound) || (err == nil && rec.DeviceID != id) {
		return nil, api.Errorf(api.CodeUnauthenticated, "certificate %s was not issued to device %s by this server", serial, id)
	} else if err != nil {
		return nil, fmt.Errorf("reading certificate record: %w", err)
	}
	if !rec.RevokedAt.IsZero() {
		return nil, api.Errorf(api.CodeRevoked, "certificate %s of device %s was revoked at %s: %s", serial, id, rec.RevokedAt.UTC().Format(time.RFC3339), rec.RevocationReason)
	}
	dev, err := s.cfg.Store.Device(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("reading device: %w", err)
	}
	if dev.Status == store.StatusRevoked || dev.Status == store.StatusDenied {
		return nil, api.Errorf(statusCode(dev.Status), "device %s is %s: %s", id, dev.Status, dev.StatusReason)
	}
	return &api.WhoamiResponse{DeviceID: id, Serial: serial, NotAfter: leaf.NotAfter}, nil
}

// TrustDomain is the CA's trust domain.
func (s *Server) TrustDomain() string { return s.cfg.CA.TrustDomain() }

// PurgeExpiredSessions removes dead sessions; the daemon calls it
// periodically.
func (s *Server) PurgeExpiredSessions(ctx context.Context) (int, error) {
	return s.cfg.Store.PurgeExpiredSessions(ctx, s.cfg.Now())
}

// refuse maps an attest verdict to its wire code and counts it.
func (s *Server) refuse(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	var ve *attest.VerificationError
	if !errors.As(err, &ve) {
		return api.Errorf(api.CodeBadRequest, "%v", err)
	}
	s.metrics.attestationFailures.WithLabelValues(ve.Reason.String()).Inc()
	return &api.Error{Code: codeOf(ve.Reason), Message: err.Error()}
}

func codeOf(r attest.Reason) api.Code {
	switch r {
	case attest.ReasonEKUntrusted, attest.ReasonEKMismatch, attest.ReasonEKWeak:
		return api.CodeEKUntrusted
	case attest.ReasonAKInvalid:
		return api.CodeAKInvalid
	case attest.ReasonActivationFailed:
		return api.CodeActivationFailed
	case attest.ReasonQuoteSignature, attest.ReasonQuoteNonce, attest.ReasonPCRMismatch:
		return api.CodeQuoteInvalid
	case attest.ReasonKeyNotCertified, attest.ReasonCSRKeyMismatch:
		return api.CodeKeyNotCertified
	default:
		return api.CodeBadRequest
	}
}

// outcomeOf classifies an error for metrics: refused (the device's fault,
// with its code) or error (ours).
func outcomeOf(err error) (outcome, code string) {
	if err == nil {
		return "success", ""
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		if ae.Code == api.CodeInternal || ae.Code == api.CodeUnavailable {
			return "error", string(ae.Code)
		}
		return "refused", string(ae.Code)
	}
	return "error", string(api.CodeInternal)
}

func levelOf(outcome string) slog.Level {
	if outcome == "error" {
		return slog.LevelError
	}
	return slog.LevelWarn
}

// requestDigest identifies a finish request's content. encoding/json
// output is deterministic for a struct, so equal requests digest equal.
func requestDigest(req *api.FinishRequest) ([]byte, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encoding finish request: %w", err)
	}
	sum := sha256.Sum256(b)
	return sum[:], nil
}

func (s *Server) randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
		return "", fmt.Errorf("reading randomness: %w", err)
	}
	return hex.EncodeToString(b), nil
}
