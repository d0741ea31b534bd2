// Package device is the enrollment agent that runs on the edge device.
//
// It proves the device's TPM identity to the enrollment server, receives a
// short-lived mTLS certificate for a key that lives in the TPM and a signed
// config bundle, verifies both against the enrollment root installed on the
// device, and keeps them in its bbolt cache (package cache).
//
// Trust: the agent trusts only the enrollment root it was given. Nothing in
// a server response is used before it verifies: the certificate chain must
// chain to the root, name this device and carry the TPM key; the bundle's
// signature must chain to the root. The agent never holds a private key
// outside the TPM.
//
// The agent owns its TPM: every TPM command goes through one mutex, since a
// TPM is not safe for concurrent use.
package device
