// Package tpmsim is a software TPM 2.0 for tests and the demo: the Microsoft
// reference simulator (github.com/google/go-tpm-tools/simulator, linked through
// cgo against libcrypto) exposed as a go-attestation command channel and as a
// go-tpm transport.TPM, plus a test TPM manufacturer that issues TCG-style EK
// certificates and provisions them into the TPM's NV storage the way a TPM
// vendor's factory does.
//
// It is test and demo tooling only. It must never be linked into the
// production agent: the production agent talks to /dev/tpmrm0 (or another real
// command channel), builds with CGO_ENABLED=0 for cross-compiled targets, and
// its binary would grow by the whole reference TPM if it imported this
// package. Nothing here is secure: GetWithFixedSeedInsecure derives every
// hierarchy seed from a small integer, and the manufacturer CA key lives in a
// file.
//
// The simulator is a process-wide C singleton. Only one TPM may be open per
// process at a time (Open blocks until the previous one is closed), and it
// must never be driven from two goroutines at once. Share one TPM per test
// binary (TestMain) and close every AK and key after use: only about two
// transient objects fit beside the SRK.
//
// Without cgo the package still compiles, and Open returns ErrCgoRequired, so
// callers (tests) can skip with a clear message.
package tpmsim
