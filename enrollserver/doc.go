// Package enrollserver is the enrollment server's core: the begin/finish
// state machine, the admission policy, issuance, metrics and logs.
//
// Transports are thin adapters over Server (package httpapi for HTTPS):
// they decode and validate a message with package api, call Begin or
// Finish, and map the returned *api.Error to their own status codes.
// Verification of TPM evidence is delegated to package attest, and of
// measured boot (event-log replay, firmware policy) to package firmware;
// both are pure. This package owns the I/O around them: the store (with
// each group's approved firmware references), the CA, the clock,
// randomness and single use of every nonce.
package enrollserver
