package attest

import (
	"crypto"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"io"

	goattest "github.com/google/go-attestation/attest"
)

// NewActivationChallenge makes a credential activation challenge
// (TPM2_MakeCredential, TPM 2.0 Part 1, 24) for the AK under the EK: it
// checks ekPub is an acceptable EK (ReasonEKWeak), runs VerifyAKParameters,
// then encrypts a fresh ActivationSecretSize-byte secret so that only a TPM
// holding the EK's private key, with the AK of exactly this name (public
// area, attributes included) loaded, can recover it.
//
// rnd supplies the secret; nil means crypto/rand. (The encryption's seed
// always comes from crypto/rand inside go-tpm.)
//
// The caller keeps secret (or a value derived from it) for
// VerifyActivationProof, and must tie ekPub to the device first
// (VerifyEKCertificate or a pre-registration): activation proves the AK shares
// a TPM with this EK, not that the EK is genuine. An error that is not a
// *VerificationError is a server fault (random source).
func NewActivationChallenge(rnd io.Reader, ekPub crypto.PublicKey, p goattest.AttestationParameters) (secret []byte, ec *goattest.EncryptedCredential, err error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	if err := checkEKKey(ekPub); err != nil {
		return nil, nil, err
	}
	if _, err := VerifyAKParameters(p); err != nil {
		return nil, nil, err
	}
	// go-attestation's Generate runs CheckAKParameters again (cheap next
	// to the RSA/ECDH encryption) and then MakeCredential.
	ap := goattest.ActivationParameters{EK: ekPub, AK: p, Rand: rnd}
	secret, ec, err = ap.Generate()
	if err != nil {
		return nil, nil, fmt.Errorf("attest: generating activation challenge: %w", err)
	}
	if len(secret) != ActivationSecretSize {
		return nil, nil, fmt.Errorf("attest: activation secret of %d bytes, want %d", len(secret), ActivationSecretSize)
	}
	return secret, ec, nil
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
