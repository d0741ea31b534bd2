package stepca

import "errors"

// Errors returned by New, ParseProvisionerKey, ReadProvisionerKey,
// ParseX5CCredential and ReadX5CCredential.
var (
	// ErrOptions means an Options field is invalid; the message names
	// every invalid field.
	ErrOptions = errors.New("stepca: invalid options")
	// ErrProvisionerKey means the provisioner key or X5C credential
	// cannot be read, decrypted or used to sign tokens.
	ErrProvisionerKey = errors.New("stepca: invalid provisioner key")
)

// Errors returned by IssueDevice, Revoke and Check. Device-form errors
// (device ID, public key, lifetime) are package pki's sentinels.
var (
	// ErrRequest means the request lacks what step-ca needs: the device's
	// CSR, carrying the request's public key; or, for Revoke, a serial
	// number in hexadecimal and a reason code from 0 to 10.
	ErrRequest = errors.New("stepca: invalid certificate request")
	// ErrUnavailable means step-ca could not be reached, did not answer
	// within the timeout, or failed (5xx). Retrying later may succeed.
	ErrUnavailable = errors.New("stepca: step-ca is unavailable")
	// ErrProvisioner means step-ca does not accept our provisioner: no
	// provisioner of that name and type (JWK for a key, X5C for an x5c
	// credential), the key is not its key, or the x5c chain does not
	// verify to its roots (the CA answered 401 to the token, or Check
	// found the mismatch).
	ErrProvisioner = errors.New("stepca: provisioner or its key does not match the step-ca")
	// ErrRefused means step-ca refused to sign or revoke (4xx other than
	// 401, or 501), such as a lifetime outside the provisioner's limits, a
	// name policy, or a step-ca without a database, which cannot revoke.
	ErrRefused = errors.New("stepca: step-ca refused the certificate request")
	// ErrChain means step-ca returned a certificate chain we will not hand
	// to a device; the message says which check failed.
	ErrChain = errors.New("stepca: step-ca returned an unacceptable certificate")
	// ErrCredentialExpired means the X5C credential is not valid now, or
	// its leaf expires within pki.MinLeafLifetime, so step-ca could issue
	// no device certificate with it (none may outlive it). Renew the
	// certificate and restart.
	ErrCredentialExpired = errors.New("stepca: x5c credential is expired or expires too soon")
)
