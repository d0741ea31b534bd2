package attest

import (
	"crypto"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"io"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2/credactivation"
)

// activationSymBlockSize is the AES block size of the credential's
// symmetric protection (TPM 2.0 Part 1, 24.4), as go-attestation uses.
const activationSymBlockSize = 16

// NewActivationChallenge makes a credential activation challenge
// (TPM2_MakeCredential, TPM 2.0 Part 1, 24) for the AK under the EK: it
// runs VerifyAKParameters, then MakeCredential.
func NewActivationChallenge(rnd io.Reader, ekPub crypto.PublicKey, p goattest.AttestationParameters) (secret []byte, ec *goattest.EncryptedCredential, err error) {
	// A weak EK is refused before the AK is looked at (MakeCredential
	// checks it again).
	if err := checkEKKey(ekPub); err != nil {
		return nil, nil, err
	}
	ak, err := VerifyAKParameters(p)
	if err != nil {
		return nil, nil, err
	}
	return MakeCredential(rnd, ekPub, ak)
}

// MakeCredential checks ekPub is an acceptable EK (ReasonEKWeak), then
// encrypts a fresh ActivationSecretSize-byte secret so that only a TPM
// holding the EK's private key, with the AK of exactly this name (public
// area, attributes included) loaded, can recover it. ak must come from
// VerifyAKParameters, which took the name from the verified creation
// attestation; an AKPublic from ParseAKPublic is refused.
//
// rnd supplies the secret; nil means crypto/rand. (The encryption's seed
// always comes from crypto/rand inside go-tpm.)
//
// The caller keeps secret (or a value derived from it) for
// VerifyActivationProof, and must tie ekPub to the device first
// (VerifyEKCertificate or a pre-registration): activation proves the AK shares
// a TPM with this EK, not that the EK is genuine. An error that is not a
// *VerificationError is a server fault (random source).
func MakeCredential(rnd io.Reader, ekPub crypto.PublicKey, ak *AKPublic) (secret []byte, ec *goattest.EncryptedCredential, err error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	if err := checkEKKey(ekPub); err != nil {
		return nil, nil, err
	}
	if ak == nil || ak.createdName == nil {
		return nil, nil, reject(ReasonAKInvalid, "the AK's creation was not verified (VerifyAKParameters)")
	}
	secret = make([]byte, ActivationSecretSize)
	if _, err := io.ReadFull(rnd, secret); err != nil {
		return nil, nil, fmt.Errorf("attest: generating activation secret: %w", err)
	}
	cred, encSecret, err := credactivation.Generate(ak.createdName, ekPub, activationSymBlockSize, secret)
	if err != nil {
		return nil, nil, fmt.Errorf("attest: generating activation challenge: %w", err)
	}
	return secret, &goattest.EncryptedCredential{Credential: cred, Secret: encSecret}, nil
}

// VerifyActivationProof compares the expected activation proof (the secret,
// or a value the caller derived from it) with the one the device returned,
// in constant time. A wrong length, an empty expectation or a mismatch is
// ReasonActivationFailed. Single use of the secret is the caller's job.
func VerifyActivationProof(want, got []byte) error {
	if len(want) == 0 {
		return reject(ReasonActivationFailed, "no expected activation proof")
	}
	if len(got) != len(want) {
		return reject(ReasonActivationFailed, "activation proof of %d bytes, want %d", len(got), len(want))
	}
	if subtle.ConstantTimeCompare(want, got) != 1 {
		return reject(ReasonActivationFailed, "activation proof does not match: the AK is not in the EK's TPM")
	}
	return nil
}
