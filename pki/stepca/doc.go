// Package stepca is a pki.Issuer that asks an operator's existing step-ca
// (https://github.com/smallstep/certificates) for device certificates,
// after edgeenroll's attestation has decided. The embedded CA (package
// pki) stays the default; config bundles are always signed by it.
//
// # How a certificate is asked for
//
// For every enrollment the Issuer signs a one-time token (a JWT) with the
// private key of a JWK provisioner of the step-ca (the token names the key
// in its kid header), or with an X5C credential: a certificate chain that
// verifies to the roots of an X5C provisioner, carried in the token's x5c
// header, and its leaf's key (the audience then ends in
// #x5c/<provisioner>, and no certificate asked for outlives the leaf).
// The claims are the same: issuer = provisioner name, subject = device ID, sans = [spiffe://<trust domain>/device/<id>],
// audience = <url>/1.0/sign, a random 256-bit jti that step-ca accepts only
// once, a one-minute lifetime, and a cnf claim holding the SHA-256 of the
// device's CSR, so the token is good for that CSR only. It posts the
// device's own CSR (signed in the TPM; the server never holds the device
// key) with the token and NotAfter = now + lifetime to /1.0/sign. step-ca
// checks the token, that the CSR's common name is the subject and that the
// CSR asks for no other names, applies the provisioner's limits and
// template, and signs.
//
// # Revocation
//
// Revoke (pki.Revoker) asks step-ca for a passive revocation of a serial
// (POST /1.0/revoke) with a one-time token of the same provisioner whose
// subject is the serial; step-ca records it in its database, then refuses
// to renew the certificate and lists it on its CRL. "Already revoked" is
// success. Which serials to forward is the caller's choice
// (enrollserver's RevocationForwarder).
//
// # Trust boundary
//
// The caller decides whether a device deserves a certificate: IssueDevice
// asks for one for whatever key and CSR it is given, and the caller must
// have proven (package attest) that the key is the device's TPM-resident,
// AK-certified key and that the CSR carries it. step-ca is trusted to
// sign, not to decide what is signed: IssueDevice checks the returned
// chain before handing it out (see IssueDevice) and refuses a leaf for
// another key or name, one that could act as a CA or sign code (a device
// could otherwise sign config bundles), or one that does not verify to
// the configured step-ca roots, never the system roots.
//
// # What it never does
//
// It imports no smallstep/certificates code: it speaks step-ca's HTTP API
// (POST /1.0/sign, POST /1.0/revoke, GET /1.0/provisioners) with net/http, so enrolld does
// not link a CA server. It keeps no global state, never logs and never
// prompts for a password. Every call is bounded by Options.Timeout.
package stepca
