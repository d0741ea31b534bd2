package enrollserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Revocations reach a CA that keeps its own revocation list (an Issuer
// that is a pki.Revoker, such as pki/stepca) in two ways:
//
//   - DeviceAction forwards the certificates a revoke has just revoked,
//     once the store has recorded them and the CRL is signed
//     (forwardRevocations);
//   - a RevocationForwarder, run by the daemon at startup and then
//     periodically, walks the store's revocations and forwards those it has
//     not seen acknowledged since the process started (Reconcile). A
//     forward that failed because the CA was down is retried there.
//
// The store records no issuer per certificate, so "issued by that CA" is
// decided the safe way round: a serial is forwarded unless it is provably
// the embedded CA's, that is, it is the device's last certificate and the
// recorded chain verifies to the enrollment root. An older certificate of
// the device, whose chain is not kept, is forwarded too; the CA then
// records a serial it may never have issued, which is harmless (the
// Revoker is idempotent and serials are random). Expired certificates are
// never forwarded.
//
// No audit record is written per forward: the device.revoke record is the
// operator's decision, and a forward only carries it out. Failures are
// logged at warn with the serial and how often it has failed.

// Caps of revocation forwarding.
const (
	// MaxRevocationForwardsPerPass bounds the revocations one Reconcile
	// pass forwards; the rest wait for the next pass.
	MaxRevocationForwardsPerPass = 1000
	// MaxSettledRevocations bounds the serials a RevocationForwarder
	// remembers as done (~80 bytes each). A settled serial is forgotten
	// once its certificate expires (it is no longer forwarded then). Past
	// the cap new ones are not remembered and are forwarded again each
	// pass, which the CA answers as already revoked: a fleet with more
	// unexpired revocations than this makes passes repeat work, never
	// skip any.
	MaxSettledRevocations = 1 << 20
	// revocationForwardBudget bounds what DeviceAction waits for its
	// forwards; what does not fit is left to the next Reconcile.
	revocationForwardBudget = 20 * time.Second
)

// forwardRevocations hands the certificates a device action revoked
// (changes[id].Revoked) to the Issuer, if it is a pki.Revoker. It never
// fails the action: the revocation is recorded and enforced by the
// server, and a forward that fails is logged and left to the
// RevocationForwarder's next pass. It stops at the first sign that the CA
// is down.
func (s *Server) forwardRevocations(ctx context.Context, correlationID string, changes map[string]*store.DeviceChange) {
	rev, ok := s.cfg.Issuer.(pki.Revoker)
	if !ok {
		return
	}
	// The operator may hang up; the forwards still run, bounded.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revocationForwardBudget)
	defer cancel()
	ids := make([]string, 0, len(changes))
	for id, ch := range changes {
		if ch != nil && ch.Revoke != nil && len(ch.Revoked) > 0 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	var forwarded, skipped, pending int
	var stopped error
	for _, id := range ids {
		ch := changes[id]
		for _, serial := range ch.Revoked {
			if stopped != nil {
				pending++
				continue
			}
			if fromEnrollmentCA(s.cfg.CA, ch.Device, serial) {
				skipped++
				continue
			}
			if err := rev.Revoke(ctx, serial, ch.Revoke.ReasonCode, ch.Revoke.Reason); err != nil {
				pending++
				s.log.LogAttrs(ctx, slog.LevelWarn, "forwarding revocation to the issuing CA failed; it is retried",
					slog.String("correlation_id", correlationID), slog.String("serial", serial), slog.String("device_id", id),
					slog.String("err", err.Error()))
				if errors.Is(err, pki.ErrRevokerUnavailable) || ctx.Err() != nil {
					stopped = err
				}
				continue
			}
			forwarded++
		}
	}
	if forwarded+pending > 0 {
		level := slog.LevelInfo
		if pending > 0 {
			level = slog.LevelWarn
		}
		s.log.LogAttrs(ctx, level, "revocations forwarded to the issuing CA", slog.String("correlation_id", correlationID),
			slog.Int("forwarded", forwarded), slog.Int("not_forwarded", pending), slog.Int("embedded_ca", skipped))
	}
}

// fromEnrollmentCA reports whether serial is provably a certificate of the
// embedded CA: dev's last certificate, whose recorded chain verifies to
// the enrollment root. Anything else may be the other CA's.
func fromEnrollmentCA(ca *pki.CA, dev *store.Device, serial string) bool {
	if ca == nil || dev == nil || dev.CertSerial != serial || len(dev.CertificateChain) == 0 {
		return false
	}
	leaf, err := x509.ParseCertificate(dev.CertificateChain[0])
	if err != nil || leaf.SerialNumber.Text(16) != serial {
		return false
	}
	inter := x509.NewCertPool()
	for _, der := range dev.CertificateChain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return false
		}
		inter.AddCert(c)
	}
	// At the end of the leaf's validity every certificate of a chain the
	// embedded CA issued was valid (it never outlives its intermediate).
	_, err = leaf.Verify(x509.VerifyOptions{
		Roots: ca.RootPool(), Intermediates: inter, CurrentTime: leaf.NotAfter.Add(-time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err == nil
}

// RevocationForwarderConfig configures a RevocationForwarder. Store, CA
// and Revoker are required.
type RevocationForwarderConfig struct {
	Store store.Store
	// CA is the embedded CA: its certificates are never forwarded.
	CA *pki.CA
	// Revoker is the issuer's CA revocations are forwarded to.
	Revoker pki.Revoker
	// Logger receives failures (warn) and summaries; nil discards.
	Logger *slog.Logger
	// Now is the clock that says which certificates expired; default
	// time.Now.
	Now func() time.Time
}

// RevocationForwarder re-forwards revocations the Revoker has not
// acknowledged since it was made: see Reconcile. It is safe for concurrent
// use; passes run one at a time.
type RevocationForwarder struct {
	cfg  RevocationForwarderConfig
	pass sync.Mutex // one Reconcile at a time

	mu sync.Mutex
	// settled are serials acknowledged by the Revoker or provably the
	// embedded CA's, with their certificate's NotAfter (zero: unknown),
	// at most MaxSettledRevocations; expired ones are dropped each pass.
	settled map[string]time.Time
	// failures counts failed forwards of serials not yet settled.
	failures map[string]int
}

// NewRevocationForwarder validates cfg.
func NewRevocationForwarder(cfg RevocationForwarderConfig) (*RevocationForwarder, error) {
	var errs []error
	if cfg.Store == nil {
		errs = append(errs, errors.New("Store is required"))
	}
	if cfg.CA == nil {
		errs = append(errs, errors.New("CA is required"))
	}
	if cfg.Revoker == nil {
		errs = append(errs, errors.New("Revoker is required"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("revocation forwarder config: %w", errors.Join(errs...))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &RevocationForwarder{cfg: cfg, settled: map[string]time.Time{}, failures: map[string]int{}}, nil
}

// ReconcileResult counts what one pass did.
type ReconcileResult struct {
	// Forwarded revocations were acknowledged by the Revoker.
	Forwarded int
	// EmbeddedCA revocations were of the embedded CA's certificates.
	EmbeddedCA int
	// Pending revocations are still to forward: they failed, or the pass
	// stopped (CA unavailable, MaxRevocationForwardsPerPass) before them.
	Pending int
}

// Reconcile walks the store's revocations of certificates not yet expired
// and forwards each one not settled since the forwarder was made (first
// the serials that never failed, so a refused one cannot hold up the
// rest), at most MaxRevocationForwardsPerPass. It stops at the first
// pki.ErrRevokerUnavailable: the CA is down, and the next pass retries.
// Other failures are logged and retried next pass. The error is the
// store's, or ctx's.
func (f *RevocationForwarder) Reconcile(ctx context.Context) (ReconcileResult, error) {
	f.pass.Lock()
	defer f.pass.Unlock()
	var res ReconcileResult

	// 1. Collect, without I/O inside the store's read: first the serials
	// that never failed, then the others, MaxRevocationForwardsPerPass in
	// all, so serials refused again and again cannot crowd out new ones.
	now := f.cfg.Now()
	var fresh, retry []store.Revocation
	f.mu.Lock()
	for serial, notAfter := range f.settled {
		if !notAfter.IsZero() && notAfter.Before(now) {
			delete(f.settled, serial)
		}
	}
	err := f.cfg.Store.Revocations(ctx, func(r *store.Revocation) bool {
		if !r.NotAfter.IsZero() && r.NotAfter.Before(now) {
			return true
		}
		if notAfter, ok := f.settled[r.Serial]; ok {
			if notAfter.IsZero() { // settled by Revoke: now its end is known
				f.settled[r.Serial] = r.NotAfter
			}
			return true
		}
		switch {
		case f.failures[r.Serial] == 0 && len(fresh) < MaxRevocationForwardsPerPass:
			fresh = append(fresh, *r)
		case f.failures[r.Serial] > 0 && len(retry) < MaxRevocationForwardsPerPass:
			retry = append(retry, *r)
		default:
			res.Pending++
		}
		return true
	})
	f.mu.Unlock()
	if err != nil {
		return res, fmt.Errorf("reading revocations: %w", err)
	}
	todo := append(fresh, retry...)
	if len(todo) > MaxRevocationForwardsPerPass {
		res.Pending += len(todo) - MaxRevocationForwardsPerPass
		todo = todo[:MaxRevocationForwardsPerPass]
	}

	// 2. Forward.
	for i, r := range todo {
		if err := ctx.Err(); err != nil {
			res.Pending += len(todo) - i
			return res, err
		}
		dev, err := f.cfg.Store.Device(ctx, r.DeviceID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			res.Pending += len(todo) - i
			return res, fmt.Errorf("reading device %s: %w", r.DeviceID, err)
		}
		if fromEnrollmentCA(f.cfg.CA, dev, r.Serial) {
			f.settle(r.Serial, r.NotAfter)
			res.EmbeddedCA++
			continue
		}
		if err := f.cfg.Revoker.Revoke(ctx, r.Serial, r.ReasonCode, r.Reason); err != nil {
			n := f.failed(r.Serial)
			f.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "forwarding revocation to the issuing CA failed; it is retried",
				slog.String("serial", r.Serial), slog.String("device_id", r.DeviceID), slog.Int("attempts", n), slog.String("err", err.Error()))
			if errors.Is(err, pki.ErrRevokerUnavailable) {
				res.Pending += len(todo) - i
				break
			}
			res.Pending++
			continue
		}
		f.settle(r.Serial, r.NotAfter)
		res.Forwarded++
	}
	switch {
	case res.Pending > 0:
		f.cfg.Logger.LogAttrs(ctx, slog.LevelWarn, "revocations not yet forwarded to the issuing CA",
			slog.Int("pending", res.Pending), slog.Int("forwarded", res.Forwarded))
	case res.Forwarded > 0:
		f.cfg.Logger.LogAttrs(ctx, slog.LevelInfo, "revocations forwarded to the issuing CA", slog.Int("forwarded", res.Forwarded))
	}
	return res, nil
}

// Run reconciles at once and then every interval until ctx ends, logging
// store errors.
func (f *RevocationForwarder) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := f.Reconcile(ctx); err != nil && ctx.Err() == nil {
			f.cfg.Logger.LogAttrs(ctx, slog.LevelError, "reconciling revocations with the issuing CA", slog.String("err", err.Error()))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Revoke implements pki.Revoker for the Server's own forwards (a device
// action's): it revokes through the configured Revoker and, once that
// acknowledged, remembers the serial as settled, so the next Reconcile
// pass does not send it again. Give the Server an Issuer whose Revoke is
// this one (enrolld's daemon does).
func (f *RevocationForwarder) Revoke(ctx context.Context, serial string, reasonCode int, reason string) error {
	if err := f.cfg.Revoker.Revoke(ctx, serial, reasonCode, reason); err != nil {
		return err
	}
	f.settle(serial, time.Time{}) // its end is learnt at the next pass
	return nil
}

// settle remembers serial, whose certificate ends at notAfter, as done.
func (f *RevocationForwarder) settle(serial string, notAfter time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.failures, serial)
	if len(f.settled) < MaxSettledRevocations {
		f.settled[serial] = notAfter
	}
}

// failed counts a failed forward of serial and returns the count.
func (f *RevocationForwarder) failed(serial string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.failures) >= MaxSettledRevocations {
		clear(f.failures) // counts are for logs only
	}
	f.failures[serial]++
	return f.failures[serial]
}
