// Package api defines the edgeenroll wire protocol shared by the device agent
// and the enrollment server: message types, versioned paths, the stable error
// codes, size limits and validation of message shape.
//
// It holds no policy and does no verification of TPM evidence: a message that
// passes Validate is well formed, not trusted. Every byte field is untrusted
// input until package attest has verified it on the server.
package api
