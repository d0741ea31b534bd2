package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.step.sm/crypto/keyutil"
)

// archiveTimeLayout names each rotation's archive directory.
const archiveTimeLayout = "20060102T150405Z"

// RetiredIntermediate is an intermediate that RotateIntermediate replaced.
// The certificates it issued stay valid until they expire, and a relying
// party that checks revocation needs a CRL signed by their issuer: a CRL
// is matched to a certificate by issuer name and key (the authority key
// identifier), so the new intermediate's CRL does not cover them. The CA
// therefore signs a CRL with every retired intermediate whose key it has
// and whose certificate has not expired (SignCRLs).
type RetiredIntermediate struct {
	Certificate *x509.Certificate
	// RetiredAt is when the rotation archived it.
	RetiredAt time.Time
	// Archive is the archive directory holding its certificate.
	Archive string
	// CanSignCRL: its key is in the archive (or named by
	// Options.RetiredIntermediateKeyURIs), so its CRL is signed.
	CanSignCRL bool

	key crypto.Signer
}

// MayHaveValidCertificates reports whether certificates it issued may
// still be valid at now: a running enrolld keeps issuing with the old
// intermediate until it restarts, for at most MaxLeafLifetime each, so
// this is an estimate from the rotation time, never later than the
// intermediate's own expiry.
func (r *RetiredIntermediate) MayHaveValidCertificates(now time.Time) bool {
	return now.Before(r.RetiredAt.Add(MaxLeafLifetime)) && now.Before(r.Certificate.NotAfter)
}

// loadRetired reads the intermediates archived in dir/archive that the
// root signed and that have not expired, each with its key when the
// archive still holds it or retiredURIs names it; the newest first.
// current is the intermediate in service.
func loadRetired(dir string, cfg config, keys *caKeys, root, current *x509.Certificate) ([]*RetiredIntermediate, error) {
	entries, err := os.ReadDir(filepath.Join(dir, ArchiveDir))
	if errors.Is(err, fs.ErrNotExist) {
		entries = nil
	} else if err != nil {
		return nil, fmt.Errorf("reading the ca archive: %w", err)
	}
	now := cfg.now()
	var out []*RetiredIntermediate
	for _, e := range entries {
		at, err := time.Parse(archiveTimeLayout, e.Name())
		if !e.IsDir() || err != nil {
			continue // not a rotation's directory
		}
		archive := filepath.Join(dir, ArchiveDir, e.Name())
		cert, err := loadCertificate(archive, IntermediateCertFile)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("archived intermediate in %s: %w", archive, err)
		}
		if !cert.IsCA || cert.CheckSignatureFrom(root) != nil {
			return nil, fmt.Errorf("%w: in %s: %s is not a CA certificate signed by %s", ErrCACorrupt, archive, IntermediateCertFile, RootCertFile)
		}
		if !now.Before(cert.NotAfter) || bytes.Equal(cert.Raw, current.Raw) ||
			slices.ContainsFunc(out, func(r *RetiredIntermediate) bool { return bytes.Equal(r.Certificate.Raw, cert.Raw) }) {
			continue // expired with all it issued, in service again, or archived twice
		}
		r := &RetiredIntermediate{Certificate: cert, RetiredAt: at, Archive: archive}
		if _, err := os.Lstat(filepath.Join(archive, IntermediateKeyFile)); err == nil {
			if r.key, err = loadKey(archive, IntermediateKeyFile); err != nil {
				return nil, fmt.Errorf("archived intermediate key in %s: %w", archive, err)
			}
			if keyutil.VerifyPair(cert.PublicKey, r.key) != nil {
				return nil, fmt.Errorf("%w: in %s: %s does not match %s", ErrCACorrupt, archive, IntermediateKeyFile, IntermediateCertFile)
			}
		}
		out = append(out, r)
	}
	for _, uri := range cfg.retiredIntermediateKeyURIs {
		key, err := keys.newOrOpen(uri)
		if err != nil {
			return nil, fmt.Errorf("retired intermediate key %s: %w", redactURI(uri), err)
		}
		for _, r := range out {
			if r.key == nil && keyutil.VerifyPair(r.Certificate.PublicKey, key) == nil {
				r.key = key
			}
		}
	}
	for _, r := range out {
		r.CanSignCRL = r.key != nil
	}
	slices.SortFunc(out, func(a, b *RetiredIntermediate) int { return b.RetiredAt.Compare(a.RetiredAt) })
	return out, nil
}

// RetiredIntermediates lists the intermediates rotations replaced that
// have not expired, the newest first. A daemon should warn about one that
// MayHaveValidCertificates but cannot sign its CRL.
func (ca *CA) RetiredIntermediates() []RetiredIntermediate {
	out := make([]RetiredIntermediate, len(ca.retired))
	for i, r := range ca.retired {
		out[i] = *r
		out[i].key = nil
	}
	return out
}

// SignCRLs signs the revocation list req describes once per issuer: with
// the intermediate in service (first), then with each retired
// intermediate that can sign and has not expired. Every list carries the
// same entries: a serial on the list of an issuer that did not issue it
// matches no certificate.
func (ca *CA) SignCRLs(req CRLRequest) ([][]byte, error) {
	der, err := ca.SignCRL(req)
	if err != nil {
		return nil, err
	}
	out := [][]byte{der}
	now := ca.now()
	for _, r := range ca.retired {
		if r.key == nil || !now.Before(r.Certificate.NotAfter) {
			continue
		}
		der, err := signCRL(req, r.Certificate, r.key)
		if err != nil {
			return nil, fmt.Errorf("signing the crl of the intermediate retired at %s: %w", r.RetiredAt.Format(time.RFC3339), err)
		}
		out = append(out, der)
	}
	return out, nil
}
