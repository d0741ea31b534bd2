// Package e2e holds end-to-end tests that build and run the real binaries
// (enrolld, enroll-agent, enrollctl) the way an operator would: real
// processes, real TLS on loopback, a software TPM in the agent (the
// in-process simulator build) or in a separate swtpm process.
package e2e
