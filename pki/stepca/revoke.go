package stepca

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/edgeenroll/edgeenroll/pki"
)

var _ pki.Revoker = (*Issuer)(nil)

// Revoke asks the step-ca to revoke the certificate with the given serial
// number (hexadecimal, as pki.Revoker), with an RFC 5280 reason code (0 to
// 10) and reason text. It posts to /1.0/revoke a passive revocation (the
// only kind step-ca implements: it records the serial in its database, its
// CRL if enabled, and refuses to renew the certificate) with a one-time
// token of the provisioner whose subject is the serial, within
// Options.Timeout.
//
// It is idempotent: step-ca's "already revoked" answer is success. It does
// not check that the step-ca issued the serial (step-ca does not either):
// the caller chooses what to forward. A step-ca without a database cannot
// revoke: that is ErrRefused, not ErrUnavailable, as retrying will not
// help. Other errors are those of IssueDevice: ErrRequest for a malformed
// serial or reason code, ErrCredentialExpired, ErrUnavailable (which also
// matches pki.ErrRevokerUnavailable), ErrProvisioner, ErrRefused.
func (iss *Issuer) Revoke(ctx context.Context, serial string, reasonCode int, reason string) error {
	// 1. The request's form.
	n, ok := new(big.Int).SetString(serial, 16)
	switch {
	case serial == "" || strings.HasPrefix(serial, "+") || strings.HasPrefix(serial, "-") || !ok:
		return fmt.Errorf("%w: serial %.80q is not a hexadecimal number", ErrRequest, serial)
	case n.Sign() <= 0 || n.BitLen() > maxSerialBits:
		return fmt.Errorf("%w: serial %.80q is outside 1 to %d bits", ErrRequest, serial, maxSerialBits)
	case reasonCode < 0 || reasonCode > maxReasonCode:
		return fmt.Errorf("%w: reason code %d is outside 0 to %d (RFC 5280 CRLReason)", ErrRequest, reasonCode, maxReasonCode)
	}
	reason = clipReason(reason)
	now := iss.cfg.now()
	if err := iss.cfg.cred.checkTime(now, 0); err != nil {
		return err
	}

	// 2. Ask. step-ca compares the token's subject with the request's
	// serial after reading that as a number and writing it in decimal.
	decimal := n.String()
	tok, err := iss.cfg.newRevokeToken(decimal, now)
	if err != nil {
		return err
	}
	body, err := json.Marshal(revokeRequest{Serial: decimal, OTT: tok, ReasonCode: reasonCode, Reason: reason, Passive: true})
	if err != nil {
		return fmt.Errorf("encoding revoke request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, iss.cfg.timeout)
	defer cancel()
	_, err = iss.do(ctx, http.MethodPost, iss.cfg.revokeURL, body)
	// 3. "Already revoked" (400) is what we asked for.
	if errors.Is(err, ErrRefused) && strings.Contains(err.Error(), "is already revoked") {
		return nil
	}
	if errors.Is(err, ErrUnavailable) {
		return unavailableError{fmt.Errorf("revoking serial %s: %w", serial, err)}
	}
	if err != nil {
		return fmt.Errorf("revoking serial %s: %w", serial, err)
	}
	return nil
}

// unavailableError is an ErrUnavailable error that also matches
// pki.ErrRevokerUnavailable, so callers that know only pki.Revoker can
// tell a step-ca that did not answer; its message is err's.
type unavailableError struct{ err error }

func (e unavailableError) Error() string   { return e.err.Error() }
func (e unavailableError) Unwrap() []error { return []error{e.err, pki.ErrRevokerUnavailable} }

// clipReason makes reason valid UTF-8 of at most MaxRevokeReasonBytes.
func clipReason(reason string) string {
	reason = strings.ToValidUTF8(reason, "?")
	if len(reason) <= MaxRevokeReasonBytes {
		return reason
	}
	cut := MaxRevokeReasonBytes
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut]
}
