package pki

import "errors"

// Errors returned by LoadOrCreateCA and DefaultOptions validation.
var (
	// ErrOptions means an Options field is invalid; the message names it.
	ErrOptions = errors.New("pki: invalid options")
	// ErrTrustDomain means a trust domain is not a valid SPIFFE trust domain
	// (lowercase letters, digits, '.', '-', '_').
	ErrTrustDomain = errors.New("pki: invalid trust domain")
	// ErrCAIncomplete means the CA directory holds some CA files but not all.
	// pki never regenerates keys over a partial directory: restore the
	// missing files, or move the directory aside to create a new CA.
	ErrCAIncomplete = errors.New("pki: ca directory is incomplete")
	// ErrKeyPermissions means a CA key file is accessible to group or others.
	ErrKeyPermissions = errors.New("pki: ca key file permissions are too open")
	// ErrCACorrupt means the CA files cannot be parsed or do not form one CA
	// (a key does not match its certificate, or a certificate is not signed
	// by its parent).
	ErrCACorrupt = errors.New("pki: ca files are invalid")
	// ErrCAExpired means the CA certificate needed for an operation is not
	// valid at the current time, or expires too soon to be useful.
	ErrCAExpired = errors.New("pki: ca certificate is not valid now")
)

// Errors returned by IssueDevice and IssueServer.
var (
	// ErrDeviceID means a device ID is not 64 lowercase hex characters.
	ErrDeviceID = errors.New("pki: invalid device id")
	// ErrPublicKey means a device public key is of an unsupported type,
	// curve or size, or is not a valid key.
	ErrPublicKey = errors.New("pki: unsupported device public key")
	// ErrLifetime means a requested certificate or bundle lifetime is out of
	// bounds.
	ErrLifetime = errors.New("pki: lifetime out of bounds")
	// ErrHosts means the host list of a server certificate is empty, too long
	// or holds something that is neither a DNS name nor an IP address.
	ErrHosts = errors.New("pki: invalid server hosts")
)

// Errors returned by DeviceIDFromCertificate.
var (
	// ErrDeviceIdentity means a certificate does not carry exactly one device
	// URI SAN in the trust domain matching its common name.
	ErrDeviceIdentity = errors.New("pki: certificate carries no valid device identity")
)

// Errors returned by SignBundle and VerifyBundle. Any error from VerifyBundle
// means the bundle must be rejected; the sentinels say why.
var (
	// ErrBundleTooLarge means the JWS exceeds MaxBundleJWSBytes or the config
	// exceeds MaxBundleBytes.
	ErrBundleTooLarge = errors.New("pki: config bundle too large")
	// ErrBundleMalformed means the bundle is not a compact JWS of the
	// expected shape, or its payload is not strictly valid (unknown or
	// duplicate fields, trailing data, config not a JSON object, missing
	// times).
	ErrBundleMalformed = errors.New("pki: malformed config bundle")
	// ErrBundleAlgorithm means the JWS algorithm is not ES256.
	ErrBundleAlgorithm = errors.New("pki: config bundle algorithm not allowed")
	// ErrBundleChain means the x5c certificate chain does not verify to the
	// roots for code signing at the given time.
	ErrBundleChain = errors.New("pki: config bundle signer is not trusted")
	// ErrBundleSignature means the JWS signature does not verify with the
	// x5c leaf key: the bundle was altered or signed by another key.
	ErrBundleSignature = errors.New("pki: config bundle signature is invalid")
	// ErrBundleVersion means the bundle version is 0; versions start at 1.
	ErrBundleVersion = errors.New("pki: config bundle version is invalid")
	// ErrBundleExpired means now is after the bundle's ExpiresAt.
	ErrBundleExpired = errors.New("pki: config bundle has expired")
	// ErrBundleNotYetValid means now is more than BundleClockSkew before the
	// bundle's IssuedAt.
	ErrBundleNotYetValid = errors.New("pki: config bundle is not yet valid")
	// ErrBundleDevice means the bundle was issued for another device.
	ErrBundleDevice = errors.New("pki: config bundle is for another device")
)
