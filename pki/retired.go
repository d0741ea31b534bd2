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
	// Options.RetiredIntermediateKeyURIs), so its CRL is signed. Set in
	// the copies RetiredIntermediates returns.
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
// archive still holds it or cfg.retiredIntermediateKeyURIs names it; the
// newest first. unmatched are the URIs opened that fit none of them.
// current is the intermediate in service.
func loadRetired(dir string, cfg config, keys *caKeys, root, current *x509.Certificate) (_ []*RetiredIntermediate, unmatched []string, _ error) {
	entries, err := os.ReadDir(filepath.Join(dir, ArchiveDir))
	if errors.Is(err, fs.ErrNotExist) {
		entries = nil
	} else if err != nil {
		return nil, nil, fmt.Errorf("reading the ca archive: %w", err)
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
			return nil, nil, fmt.Errorf("archived intermediate in %s: %w; restore it from a backup, or remove that directory once the certificates it issued have expired", archive, err)
		}
		if !cert.IsCA || cert.CheckSignatureFrom(root) != nil {
			return nil, nil, fmt.Errorf("%w: in %s: %s is not a CA certificate signed by %s; that directory is not this CA's archive: move it out of %s", ErrCACorrupt, archive, IntermediateCertFile, RootCertFile, ArchiveDir)
		}
		if !now.Before(cert.NotAfter) || bytes.Equal(cert.Raw, current.Raw) {
			continue // expired with all it issued, or in service again
		}
		var key crypto.Signer
		if _, err := os.Lstat(filepath.Join(archive, IntermediateKeyFile)); err == nil {
			if key, err = loadKey(archive, IntermediateKeyFile); err != nil {
				return nil, nil, fmt.Errorf("archived intermediate key in %s: %w; restore the key archived with its certificate", archive, err)
			}
			if keyutil.VerifyPair(cert.PublicKey, key) != nil {
				return nil, nil, fmt.Errorf("%w: in %s: %s does not match %s; restore the key archived with it, or remove both", ErrCACorrupt, archive, IntermediateKeyFile, IntermediateCertFile)
			}
		}
		// The same intermediate archived twice (a rollback, then another
		// rotation): one entry, retired at the later time, with a key if
		// either archive has it.
		if i := slices.IndexFunc(out, func(r *RetiredIntermediate) bool { return bytes.Equal(r.Certificate.Raw, cert.Raw) }); i >= 0 {
			r := out[i]
			if at.After(r.RetiredAt) {
				r.RetiredAt, r.Archive = at, archive
			}
			if r.key == nil {
				r.key = key
			}
			continue
		}
		out = append(out, &RetiredIntermediate{Certificate: cert, RetiredAt: at, Archive: archive, key: key})
	}
	// KMS keys are opened only while an intermediate needs one: a URI
	// left in the configuration after its key was destroyed must not stop
	// the CA from loading once nothing needs it.
	for _, uri := range cfg.retiredIntermediateKeyURIs {
		if !slices.ContainsFunc(out, func(r *RetiredIntermediate) bool { return r.key == nil }) {
			break
		}
		key, err := keys.newOrOpen(uri)
		if err != nil {
			return nil, nil, fmt.Errorf("retired intermediate key %s: %w; drop the URI if that intermediate's certificates have expired", redactURI(uri), err)
		}
		matched := false
		for _, r := range out {
			if r.key == nil && keyutil.VerifyPair(r.Certificate.PublicKey, key) == nil {
				r.key, matched = key, true
			}
		}
		if !matched {
			unmatched = append(unmatched, redactURI(uri))
		}
	}
	slices.SortFunc(out, func(a, b *RetiredIntermediate) int { return b.RetiredAt.Compare(a.RetiredAt) })
	return out, unmatched, nil
}

// RetiredIntermediates lists the intermediates rotations replaced that
// have not expired, the newest first. A daemon should warn about one that
// MayHaveValidCertificates but cannot sign its CRL.
func (ca *CA) RetiredIntermediates() []RetiredIntermediate {
	out := make([]RetiredIntermediate, len(ca.retired))
	for i, r := range ca.retired {
		out[i] = *r
		out[i].CanSignCRL, out[i].key = r.key != nil, nil
	}
	return out
}

// UnmatchedRetiredKeyURIs lists, redacted, the retired intermediate key
// URIs that were opened but match no archived intermediate needing a key
// (a wrong key, or one whose intermediate's archive is gone). A daemon
// should warn about them.
func (ca *CA) UnmatchedRetiredKeyURIs() []string { return slices.Clone(ca.unmatchedRetiredURIs) }

// SignCRLs signs the revocation list req describes once per issuer: with
// the intermediate in service (first), then with each retired
// intermediate that can sign and has not expired. Every list carries the
// same entries: a serial on the list of an issuer that did not issue it
// matches no certificate.
//
// When the intermediate in service cannot sign, SignCRLs returns no list
// and the error. When only retired ones fail (a KMS token gone), it
// returns the lists it signed, the current one first, and an error
// naming the others: the caller publishes what it has and reports the
// rest, so one lost old key never stops the current list.
func (ca *CA) SignCRLs(req CRLRequest) ([][]byte, error) {
	der, err := ca.SignCRL(req)
	if err != nil {
		return nil, err
	}
	out := [][]byte{der}
	var errs []error
	now := ca.now()
	for _, r := range ca.retired {
		if r.key == nil || !now.Before(r.Certificate.NotAfter) {
			continue
		}
		der, err := signCRL(req, r.Certificate, r.key)
		if err != nil {
			errs = append(errs, fmt.Errorf("signing the crl of the intermediate retired at %s (%s): %w", r.RetiredAt.Format(time.RFC3339), r.Archive, err))
			continue
		}
		out = append(out, der)
	}
	return out, errors.Join(errs...)
}
