// Package tpmdev opens the TPM a device agent uses and adapts it to
// go-attestation.
//
// Every TPM is reached through one seam, go-tpm's transport.TPM
// (Send([]byte) ([]byte, error)): the kernel resource manager
// (/dev/tpmrm0), swtpm's TCP socket, or any other command channel such as
// the in-process simulator of package tpmsim, which is only linked into
// demo and test builds. Channel wraps a transport as go-attestation's
// command channel and serialises every command: a TPM is never used from
// two goroutines at once.
package tpmdev
