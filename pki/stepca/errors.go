package stepca

import "errors"

// Errors returned by New, ParseProvisionerKey and ReadProvisionerKey.
var (
	// ErrOptions means an Options field is invalid; the message names
	// every invalid field.
	ErrOptions = errors.New("stepca: invalid options")
	// ErrProvisionerKey means the provisioner key cannot be read,
	// decrypted or used to sign tokens.
	ErrProvisionerKey = errors.New("stepca: invalid provisioner key")
)

// Errors returned by IssueDevice and Check. Device-form errors (device ID,
// public key, lifetime) are package pki's sentinels.
var (
	// ErrRequest means the request lacks what step-ca needs: the device's
	// CSR, carrying the request's public key.
	ErrRequest = errors.New("stepca: invalid certificate request")
	// ErrUnavailable means step-ca could not be reached, did not answer
	// within the timeout, or failed (5xx). Retrying later may succeed.
	ErrUnavailable = errors.New("stepca: step-ca is unavailable")
	// ErrProvisioner means step-ca does not accept our provisioner: no
	// JWK provisioner of that name, or the key is not its key (the CA
	// answered 401 to the token, or Check found another key).
	ErrProvisioner = errors.New("stepca: provisioner or its key does not match the step-ca")
	// ErrRefused means step-ca refused to sign (4xx other than 401), such
	// as a lifetime outside the provisioner's limits or a name policy.
	ErrRefused = errors.New("stepca: step-ca refused the certificate request")
	// ErrChain means step-ca returned a certificate chain we will not hand
	// to a device; the message says which check failed.
	ErrChain = errors.New("stepca: step-ca returned an unacceptable certificate")
)
