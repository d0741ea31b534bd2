// Package loadgen drives many simulated devices against an enrollment
// server and measures what happens: enrollments and renewals per second,
// latency percentiles, time to ready, retries, refusals by code, and the
// server's CPU time and memory read from /proc, so that server cost and
// device cost are reported apart. cmd/enroll-bench is its command line.
//
// Device evidence is real TPM evidence. Every device has its own ECC P-256
// EK (created with the TCG EK-nonce mechanism, see tpmsim.ECCEKTemplate),
// a manufacturer-signed EK certificate, and its own AK and TPM key, made
// before timing (CreateIdentities). During the run each enrollment asks the
// server for a fresh challenge and nonce, and a software TPM activates the
// credential, quotes the PCRs and signs the CSR: the server sees exactly
// what a real device sends.
//
// The TPM half runs in a Prover: one in-process reference simulator, which
// the C code allows once per process. A Pool runs several Provers as
// worker subprocesses (the bench binary re-executed with its hidden
// "worker" command) so the device side can use every core. All workers of a
// run share one simulator seed, so their TPMs hold the same seeds and any
// worker can act for any device.
//
// It is a test and benchmark tool: it links the simulator and a test TPM
// manufacturer, and it talks only to the server it is pointed at (loopback
// in every test). Every loop is bounded in count and in time.
package loadgen
