// Package pki is edgeenroll's certificate authority: it creates and loads the
// CA (root, intermediate and bundle-signing certificates), issues short-lived
// device and server certificates once attestation has decided, and signs and
// verifies device config bundles.
//
// # Trust boundary
//
// The server side (LoadOrCreateCA, IssueDevice, IssueServer, SignBundle)
// trusts its caller: IssueDevice signs whatever public key it is given, so
// the caller must first have proven, through package attest, that the key is
// TPM-resident and certified by the device's AK. pki only checks that the
// request is well formed (device ID format, key type and strength, lifetime
// bounds).
//
// The device side (VerifyBundle) trusts nothing but the root pool it is given:
// the bundle, its x5c certificate chain and every field of its payload are
// untrusted until the chain, the code-signing usage and the signature have
// been verified, in that order. VerifyBundle does not do rollback protection;
// the caller compares Bundle.Version with the highest version it has stored.
//
// DeviceIDFromCertificate does not verify a certificate chain either: it reads
// the identity of a certificate the caller (usually crypto/tls) has already
// verified against CA.RootPool with ExtKeyUsageClientAuth.
//
// # What pki never does
//
// It does no network I/O of its own, keeps no global state and never logs.
// Private keys live in the CA directory (files of mode 0600) or in a KMS
// (Options.IntermediateKeyURI and BundleSignerKeyURI: softkms, or PKCS#11
// in builds with -tags pkcs11) and leave it only as crypto.Signer values
// held in memory; a CA formats without its keys. RotateIntermediate
// replaces the intermediate under the same root. Two Issuer backends exist: the embedded CA here, and
// package pki/stepca, which asks an operator's step-ca and keeps
// smallstep's code out of this package and out of the device agent.
package pki
