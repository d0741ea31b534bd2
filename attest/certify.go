package attest

import (
	"crypto"
	"errors"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// VerifyKeyCertification verifies that the AK certified a TPM key
// (TPM2_Certify, TPM 2.0 Part 3, 18.2) and returns the key's public key:
//
//  1. Bounds and strict decoding of the key's TPMT_PUBLIC, the
//     TPMS_ATTEST and the TPMT_SIGNATURE (ReasonMalformed).
//  2. The key is an unrestricted signing key (it must sign the CSR and TLS
//     handshakes) of an accepted type: RSA of MinRSABits..MaxRSABits or ECC
//     P-256/P-384.
//  3. go-attestation's CertificationParameters.Verify with the AK: the
//     attestation is TPM_GENERATED, of type TPM_ST_ATTEST_CERTIFY, names
//     exactly this public area, the key is fixedTPM, fixedParent,
//     sensitiveDataOrigin and not restricted, and the AK's signature over the
//     attestation verifies.
//
// Failures in steps 2 and 3 are ReasonKeyNotCertified.
//
// It does NOT check the certification's qualifying data (extraData) or
// clock, so a certification by the same AK can be replayed; that is harmless
// only because the AK itself is bound to this enrollment by activation and
// the key it certifies is TPM-resident either way. It does NOT check the
// key's authorization policy or whether it is usable for decryption too.
func VerifyKeyCertification(ak *AKPublic, p goattest.CertificationParameters) (crypto.PublicKey, error) {
	if ak == nil || ak.Public == nil {
		return nil, errors.New("attest: VerifyKeyCertification needs an AK")
	}

	// Step 1: bounds and strict decoding.
	for _, f := range []struct {
		name string
		b    []byte
		max  int
	}{
		{"certified key public area", p.Public, MaxTPMPublicSize},
		{"certification attestation", p.CreateAttestation, MaxAttestSize},
		{"certification signature", p.CreateSignature, MaxSignatureSize},
	} {
		if len(f.b) == 0 || len(f.b) > f.max {
			return nil, reject(ReasonMalformed, "%s of %d bytes, want 1..%d", f.name, len(f.b), f.max)
		}
	}
	if len(p.CreateData) > MaxCreationDataSize {
		return nil, reject(ReasonMalformed, "certified key creation data of %d bytes, at most %d", len(p.CreateData), MaxCreationDataSize)
	}
	pub, err := decodePublic(p.Public)
	if err != nil {
		return nil, rejectErr(ReasonMalformed, err, "decoding certified key TPMT_PUBLIC")
	}
	if _, err := decodeAttest(p.CreateAttestation); err != nil {
		return nil, rejectErr(ReasonMalformed, err, "decoding certification TPMS_ATTEST")
	}
	if _, err := decodeSignature(p.CreateSignature); err != nil {
		return nil, rejectErr(ReasonMalformed, err, "decoding certification TPMT_SIGNATURE")
	}

	// Step 2: static validation of the key.
	if pub.Attributes&tpm2.FlagSign == 0 {
		return nil, reject(ReasonKeyNotCertified, "certified key cannot sign")
	}
	if _, err := hashFromTPM(pub.NameAlg); err != nil {
		return nil, rejectErr(ReasonKeyNotCertified, err, "certified key name algorithm")
	}
	key, err := tpmPublicKey(pub)
	if err != nil {
		return nil, rejectErr(ReasonKeyNotCertified, err, "certified key")
	}

	// Step 3: attributes, name binding and the AK's signature.
	if err := p.Verify(goattest.VerifyOpts{Public: ak.Public, Hash: ak.Hash}); err != nil {
		return nil, rejectErr(ReasonKeyNotCertified, err, "key certification does not verify with the AK")
	}
	return key, nil
}
