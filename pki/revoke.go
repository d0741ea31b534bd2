package pki

import (
	"context"
	"errors"
)

// ErrRevokerUnavailable is wrapped by a Revoker's error when the CA could
// not be reached or failed in a way that may pass (no answer, 5xx): retry
// later, and forward nothing more to it for now. Any other error is about
// this revocation (a refusal) and retrying it alone will not help.
var ErrRevokerUnavailable = errors.New("pki: the revoking CA is unavailable")

// Revoker is implemented by an Issuer whose CA keeps a revocation list of
// its own, so a certificate enrolld revokes must be revoked there too:
// package pki/stepca implements it. The embedded CA does not: enrolld's
// store and the CRL it signs are its revocation list.
//
// The server checks for it with a type assertion on its Issuer
// (enrollserver forwards every revocation of a certificate it cannot prove
// the embedded CA issued, and retries those not yet acknowledged).
type Revoker interface {
	// Revoke revokes the certificate with the given serial number, written
	// in hexadecimal as enrolld records it (big.Int.Text(16)), with an RFC
	// 5280 CRLReason code (ReasonUnspecified, ...) and the operator's
	// reason text.
	//
	// It must be idempotent: revoking a certificate that is already
	// revoked succeeds, so a caller may repeat a revocation it is unsure
	// arrived. An error means the revocation is not known to have been
	// recorded, and the caller should try again later; it wraps
	// ErrRevokerUnavailable when the CA did not answer.
	Revoke(ctx context.Context, serial string, reasonCode int, reason string) error
}
