package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// ErrCRL means a revocation list request is invalid.
var ErrCRL = errors.New("pki: invalid revocation list request")

// Revocation reason codes of RFC 5280 section 5.3.1 that operators use.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
)

// RevokedCertificate is one entry of a revocation list.
type RevokedCertificate struct {
	// Serial is the certificate serial number.
	Serial *big.Int
	// RevokedAt is when it was revoked.
	RevokedAt time.Time
	// ReasonCode is an RFC 5280 CRLReason (ReasonUnspecified, ...).
	ReasonCode int
}

// CRLRequest asks for a revocation list.
type CRLRequest struct {
	// Number is the CRL number; each list the CA signs must carry a higher
	// one than the last (RFC 5280 section 5.2.3).
	Number uint64
	// ThisUpdate is the issue time, NextUpdate when the next list will be
	// issued at the latest. Relying parties cache until NextUpdate, so a
	// short interval makes revocation take effect sooner.
	ThisUpdate, NextUpdate time.Time
	Revoked                []RevokedCertificate
}

// EncodeCRLsPEM encodes DER revocation lists as one PEM file, the form
// OpenSSL reads several CRLs from.
func EncodeCRLsPEM(crls [][]byte) []byte {
	var out []byte
	for _, der := range crls {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})...)
	}
	return out
}

// SignCRL signs a DER revocation list with the intermediate: the issuer of
// every certificate pki issues below the root. It checks the form of the
// request (number > 0, NextUpdate after ThisUpdate, at most MaxCRLEntries
// entries), not which certificates belong on it. After a rotation, SignCRLs
// also signs the lists of the retired intermediates.
func (ca *CA) SignCRL(req CRLRequest) ([]byte, error) {
	return signCRL(req, ca.intermediate, ca.intermediateKey)
}

func signCRL(req CRLRequest, issuer *x509.Certificate, key crypto.Signer) ([]byte, error) {
	if req.Number == 0 {
		return nil, fmt.Errorf("%w: crl number must be at least 1", ErrCRL)
	}
	if !req.NextUpdate.After(req.ThisUpdate) {
		return nil, fmt.Errorf("%w: next update %s is not after this update %s", ErrCRL, req.NextUpdate, req.ThisUpdate)
	}
	if len(req.Revoked) > MaxCRLEntries {
		return nil, fmt.Errorf("%w: %d entries, limit %d", ErrCRL, len(req.Revoked), MaxCRLEntries)
	}
	entries := make([]x509.RevocationListEntry, len(req.Revoked))
	for i, r := range req.Revoked {
		if r.Serial == nil || r.Serial.Sign() <= 0 {
			return nil, fmt.Errorf("%w: entry %d has no positive serial", ErrCRL, i)
		}
		// RFC 5280 5.3.1 reasons: 7 is unused, and 8 (removeFromCRL)
		// belongs to delta CRLs, which this CA does not sign.
		if r.ReasonCode < 0 || r.ReasonCode > 10 || r.ReasonCode == 7 || r.ReasonCode == 8 {
			return nil, fmt.Errorf("%w: entry %d has reason code %d, want 0-6, 9 or 10", ErrCRL, i, r.ReasonCode)
		}
		entries[i] = x509.RevocationListEntry{SerialNumber: r.Serial, RevocationTime: r.RevokedAt.UTC(), ReasonCode: r.ReasonCode}
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    new(big.Int).SetUint64(req.Number),
		ThisUpdate:                req.ThisUpdate.UTC(),
		NextUpdate:                req.NextUpdate.UTC(),
		RevokedCertificateEntries: entries,
	}, issuer, key)
	if err != nil {
		return nil, fmt.Errorf("signing crl: %w", err)
	}
	return der, nil
}
