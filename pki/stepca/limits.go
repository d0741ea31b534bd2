package stepca

import "time"

const (
	// DefaultTimeout bounds one call to step-ca (connection, TLS, request
	// and response) when Options.Timeout is 0. A device's finish waits on
	// it, and the HTTPS server's write timeout is 30 s.
	DefaultTimeout = 10 * time.Second
	// MaxTimeout caps Options.Timeout.
	MaxTimeout = time.Minute
	// TokenLifetime is how long a one-time token is valid. It is used at
	// once; step-ca allows one minute of clock skew on top.
	TokenLifetime = time.Minute
	// tokenIDBytes is the size of a token's random jti: 256 bits, so two
	// tokens never collide in step-ca's used-token store.
	tokenIDBytes = 32

	// MaxResponseBytes caps a step-ca response body read into memory; a
	// signed chain is a few KiB, a provisioner page some tens.
	MaxResponseBytes = 1 << 20
	// MaxChainCerts caps the returned chain (leaf and intermediates): the
	// device agent accepts 1 to 4 certificates.
	MaxChainCerts = 4
	// MaxProvisionerPages caps the pages Check reads from
	// /1.0/provisioners (100 provisioners each).
	MaxProvisionerPages = 100
	// MaxKeyFileBytes caps a provisioner key or password file.
	MaxKeyFileBytes = 64 << 10
	// maxErrorMessage caps how much of step-ca's error message we repeat.
	maxErrorMessage = 300

	// maxSerialBits bounds a serial number Revoke accepts: RFC 5280 allows
	// 20 octets.
	maxSerialBits = 160
	// maxReasonCode is the highest RFC 5280 CRLReason (aACompromise);
	// step-ca refuses higher codes.
	maxReasonCode = 10
	// MaxRevokeReasonBytes caps the reason text Revoke sends; longer text
	// is cut. step-ca stores it with the revocation.
	MaxRevokeReasonBytes = 512
)
