package enrollserver

import (
	"context"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// crlState holds the newest signed CRL.
type crlState struct {
	mu   sync.Mutex // serialises RefreshCRL
	cur  *signedCRL
	curM sync.RWMutex
}

type signedCRL struct {
	// der is the intermediate in service's list; all is every issuer's
	// (der first): after a rotation, the retired intermediates still sign
	// lists for the certificates they issued (pki.CA.SignCRLs).
	der        []byte
	all        [][]byte
	number     uint64
	thisUpdate time.Time
	nextUpdate time.Time
}

func (c *crlState) current() *signedCRL {
	c.curM.RLock()
	defer c.curM.RUnlock()
	return c.cur
}

// RefreshCRL signs a new CRL of every revoked certificate not yet expired,
// with the next CRL number, once per issuer (pki.CA.SignCRLs), and hands
// them to Config.OnCRL; it returns the list of the intermediate in
// service. The daemon calls it at start and every CRLLifetime/4;
// revocations call it at once.
func (s *Server) RefreshCRL(ctx context.Context) ([]byte, error) {
	s.crl.mu.Lock()
	defer s.crl.mu.Unlock()
	c, err := s.refreshCRLLocked(ctx)
	if err != nil {
		return nil, err
	}
	return c.der, nil
}

// refreshCRLLocked is RefreshCRL with s.crl.mu held.
func (s *Server) refreshCRLLocked(ctx context.Context) (*signedCRL, error) {
	now := s.cfg.Now()
	var revoked []pki.RevokedCertificate
	var bad error
	if err := s.cfg.Store.Revocations(ctx, func(r *store.Revocation) bool {
		// RFC 5280 5.3: an entry stays until it has been on one CRL
		// issued after the certificate expired; a CRL is signed at least
		// every CRLLifetime/4, so one lifetime past expiry is enough.
		if r.NotAfter.Add(s.cfg.CRLLifetime).Before(now) {
			return true
		}
		n, ok := new(big.Int).SetString(r.Serial, 16)
		if !ok {
			bad = fmt.Errorf("revocation of serial %q: not hex", r.Serial)
			return false
		}
		revoked = append(revoked, pki.RevokedCertificate{Serial: n, RevokedAt: r.RevokedAt, ReasonCode: r.ReasonCode})
		return true
	}); err != nil {
		return nil, fmt.Errorf("reading revocations: %w", err)
	}
	if bad != nil {
		return nil, bad
	}
	number, err := s.cfg.Store.NextCRLNumber(ctx)
	if err != nil {
		return nil, fmt.Errorf("numbering crl: %w", err)
	}
	c := &signedCRL{number: number, thisUpdate: now, nextUpdate: now.Add(s.cfg.CRLLifetime)}
	c.all, err = s.cfg.CA.SignCRLs(pki.CRLRequest{Number: number, ThisUpdate: now, NextUpdate: c.nextUpdate, Revoked: revoked})
	if len(c.all) == 0 {
		return nil, err
	}
	if err != nil {
		// Only retired intermediates failed: the current list and the
		// others are published; the lost ones are reported.
		s.log.LogAttrs(ctx, slog.LevelError, "signing the crl of a retired intermediate", slog.String("err", err.Error()))
	}
	c.der = c.all[0]
	s.crl.curM.Lock()
	s.crl.cur = c
	s.crl.curM.Unlock()
	s.metrics.crlEntries.Set(float64(len(revoked)))
	if s.cfg.OnCRL != nil {
		if err := s.cfg.OnCRL(c.all); err != nil {
			s.log.LogAttrs(ctx, slog.LevelError, "publishing crl", slog.String("err", err.Error()))
		}
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "crl signed", slog.Uint64("crl_number", number), slog.Int("entries", len(revoked)),
		slog.Int("issuers", len(c.all)), slog.Time("next_update", c.nextUpdate))
	return c, nil
}

// CRL returns the current DER revocation list of the intermediate in
// service, signing one if there is none yet or the current one is past
// half its lifetime.
func (s *Server) CRL(ctx context.Context) ([]byte, error) {
	c, err := s.freshCRL(ctx)
	if err != nil {
		return nil, err
	}
	return c.der, nil
}

// CRLs is CRL with the lists of the retired intermediates after it, one
// per issuer (pki.CA.SignCRLs).
func (s *Server) CRLs(ctx context.Context) ([][]byte, error) {
	c, err := s.freshCRL(ctx)
	if err != nil {
		return nil, err
	}
	return c.all, nil
}

// freshCRL returns the current lists, re-signing them first when they are
// past half their lifetime. Concurrent callers re-sign once: the check is
// repeated under the lock. A failed re-signing serves the lists it would
// have replaced while they are before their nextUpdate.
func (s *Server) freshCRL(ctx context.Context) (*signedCRL, error) {
	fresh := func(c *signedCRL) bool { return c != nil && s.cfg.Now().Before(c.thisUpdate.Add(s.cfg.CRLLifetime/2)) }
	if c := s.crl.current(); fresh(c) {
		return c, nil
	}
	s.crl.mu.Lock()
	defer s.crl.mu.Unlock()
	old := s.crl.current()
	if fresh(old) {
		return old, nil
	}
	c, err := s.refreshCRLLocked(ctx)
	if err != nil {
		if old != nil && s.cfg.Now().Before(old.nextUpdate) {
			s.log.LogAttrs(ctx, slog.LevelError, "re-signing the crl; serving the current one until its next update", slog.String("err", err.Error()), slog.Time("next_update", old.nextUpdate))
			return old, nil
		}
		return nil, err
	}
	return c, nil
}

// CRLRefreshInterval is how often the daemon should call RefreshCRL.
func (s *Server) CRLRefreshInterval() time.Duration { return s.cfg.CRLLifetime / 4 }
