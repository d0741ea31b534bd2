// Package attest verifies TPM 2.0 evidence for enrollment: bytes and trust
// anchors in, typed verdicts out. It does no I/O, no logging, keeps no global
// state and reads no clock (callers pass now). Every refusal is a
// *VerificationError whose Reason says which check failed; any other error
// is a fault of the caller or of the server.
//
// An enrollment runs the checks in this order, and each one relies on the
// ones before it:
//
//	ParseEKPublic          EK key type and size. Not proof the key is an EK.
//	VerifyEKCertificate    EK certificate chains to a manufacturer root at now,
//	                       follows the TCG profile, and certifies that EK key.
//	                       Not revocation; not proof the TPM is present.
//	VerifyAKParameters     AK public area claims a restricted, fixedTPM,
//	                       TPM-generated signing key and its creation
//	                       attestation is self-consistent. NOT proof that the
//	                       AK is in any TPM, let alone the EK's: the creation
//	                       attestation is signed by the AK itself.
//	NewActivationChallenge MakeCredential to the EK for the AK's name.
//	VerifyActivationProof  The device recovered the secret: the EK's TPM has
//	                       the AK loaded, so the AK's attributes (part of its
//	                       name) are enforced by that TPM. The TPM refuses to
//	                       authorize ActivateCredential for a public-only
//	                       (LoadExternal) object, so a software key cannot
//	                       pass. The caller keeps the secret per session and
//	                       uses it once.
//	VerifyQuote            The AK signed these SHA-256 PCR values over this
//	                       nonce. Freshness is only nonce equality: the caller
//	                       draws nonces from crypto/rand and uses each once.
//	                       What the PCR values mean is package firmware's job.
//	VerifyKeyCertification The AK certified a TPM-resident, non-exportable,
//	                       unrestricted signing key.
//	VerifyCSR              The CSR is signed by that key. The CSR's subject and
//	                       extensions are untrusted and must be ignored.
//
// Each function is one linear chain of commented steps in a fixed order:
// bounds and decode, static validation, chain, signature, nonce, policy.
// Every cap on input sizes is in limits.go; TPM structures are decoded
// strictly (no trailing bytes) before go-attestation's lenient decoders see
// them.
//
// The package relies on github.com/google/go-attestation for
// CheckAKParameters, MakeCredential and CertificationParameters.Verify, and
// on github.com/google/go-tpm for TPM structure decoding.
package attest
