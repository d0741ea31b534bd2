package pki

import "time"

// Certificate lifetimes.
const (
	// DefaultLeafLifetime is the lifetime of a device certificate when the
	// request does not say. Short-lived certificates are renewed through
	// re-attestation instead of being revoked.
	DefaultLeafLifetime = 24 * time.Hour
	// MinLeafLifetime is the shortest certificate pki issues: shorter ones
	// would expire before a device on a slow link has even stored them.
	MinLeafLifetime = 5 * time.Minute
	// MaxLeafLifetime is the longest device or server certificate pki issues.
	MaxLeafLifetime = 30 * 24 * time.Hour
	// DefaultServerLifetime is the lifetime of a server certificate when
	// IssueServer is given 0.
	DefaultServerLifetime = 7 * 24 * time.Hour

	// DefaultRootLifetime and DefaultIntermediateLifetime are used when a new
	// CA is created.
	DefaultRootLifetime         = 10 * 365 * 24 * time.Hour
	DefaultIntermediateLifetime = 5 * 365 * 24 * time.Hour

	// Backdate is subtracted from "now" for every certificate's NotBefore so
	// that a verifier whose clock is slightly behind accepts it.
	Backdate = time.Minute
	// BundleClockSkew is how far a device's clock may be behind the server's
	// for a freshly issued bundle to verify.
	BundleClockSkew = 5 * time.Minute
)

// Key strength.
const (
	// MinRSAKeyBits is the smallest RSA device key accepted.
	MinRSAKeyBits = 2048
	// MaxRSAKeyBits caps RSA device keys: TPMs produce 2048 or 3072 bits and
	// larger keys only make every verification slower.
	MaxRSAKeyBits = 8192
)

// Config bundle caps, enforced by both SignBundle and VerifyBundle.
const (
	// MaxBundleBytes caps the config object inside a bundle.
	MaxBundleBytes = 256 << 10
	// MaxBundleJWSBytes caps the whole compact JWS a device will parse:
	// base64 of a MaxBundleBytes config plus the other fields (4/3 of
	// ~257 KiB) and a protected header carrying two certificates.
	// api.MaxResponseBytes (1 MiB) leaves room for it and a certificate chain.
	MaxBundleJWSBytes = 384 << 10
	// MaxBundleChainCerts caps the x5c header: signer and intermediate, plus
	// one spare for a future cross-signed intermediate.
	MaxBundleChainCerts = 3
	// MaxJSONDepth caps nesting in a bundle payload, config included.
	MaxJSONDepth = 64
)

// CA directory and server certificate caps.
const (
	// MaxCAFileBytes caps each file read from the CA directory; a PEM
	// certificate or key is 1-3 KiB.
	MaxCAFileBytes = 64 << 10
	// MaxServerHosts caps the DNS names and IP addresses of one server
	// certificate.
	MaxServerHosts = 100
)

// Revocation list caps.
const (
	// MaxCRLEntries caps one revocation list. Revoked certificates drop
	// off the list once expired, so this bounds revocations within one
	// certificate lifetime.
	MaxCRLEntries = 1_000_000
)
