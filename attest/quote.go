package attest

import (
	"bytes"
	"crypto/subtle"
	"errors"

	"github.com/google/go-tpm/legacy/tpm2"
)

// tpmGenerated is TPM_GENERATED_VALUE, the magic that starts every
// TPMS_ATTEST a TPM produces (TPM 2.0 Part 2, 6.2).
const tpmGenerated = 0xff544347

// VerifyQuote verifies a TPM2_Quote (TPM 2.0 Part 3, 18.4) by the AK over the
// SHA-256 PCR bank, and returns the PCR values it proves (index -> 32-byte
// digest, a fresh map):
//
//  1. Bounds: the nonce is MinNonceSize..MaxNonceSize bytes
//     (ReasonQuoteNonce); quote, signature and PCR values are within their
//     caps, indices 0..MaxPCRs-1, digests PCRDigestSize bytes
//     (ReasonMalformed).
//  2. Decode: quote is exactly one TPMS_ATTEST with magic TPM_GENERATED and
//     type TPM_ST_ATTEST_QUOTE, signature one TPMT_SIGNATURE
//     (ReasonMalformed).
//  3. Static: the selection is the SHA-256 bank alone and its digest has the
//     size of the AK's hash (ReasonPCRMismatch).
//  4. Signature: RSASSA or ECDSA with the AK's own hash, verified with the
//     AK public key (ReasonQuoteSignature).
//  5. Nonce: extraData equals nonce, in constant time (ReasonQuoteNonce).
//  6. Policy: every index in required is selected, every reported PCR is
//     selected and every selected PCR is reported, and the reported values,
//     concatenated in selection (ascending index) order, hash to the quoted
//     pcrDigest with the AK's signing hash, which is how the TPM computes it
//     (ReasonPCRMismatch).
//
// It does NOT check freshness beyond nonce equality: the caller makes nonces
// unpredictable (crypto/rand) and single-use. It does NOT check that the AK is
// trusted (that is credential activation), nor what the PCR values mean (that
// is event log replay and firmware policy), nor the quote's clock, reset
// counts, firmware version or qualified signer name.
func VerifyQuote(ak *AKPublic, quote, signature []byte, pcrs map[int][]byte, nonce []byte, required []int) (map[int][]byte, error) {
	if ak == nil || ak.Public == nil {
		return nil, errors.New("attest: VerifyQuote needs an AK")
	}

	// Step 1: bounds.
	if len(nonce) < MinNonceSize || len(nonce) > MaxNonceSize {
		return nil, reject(ReasonQuoteNonce, "nonce of %d bytes, want %d..%d", len(nonce), MinNonceSize, MaxNonceSize)
	}
	if len(quote) == 0 || len(quote) > MaxQuoteSize {
		return nil, reject(ReasonMalformed, "quote of %d bytes, want 1..%d", len(quote), MaxQuoteSize)
	}
	if len(signature) == 0 || len(signature) > MaxSignatureSize {
		return nil, reject(ReasonMalformed, "quote signature of %d bytes, want 1..%d", len(signature), MaxSignatureSize)
	}
	if len(pcrs) > MaxPCRs {
		return nil, reject(ReasonMalformed, "%d PCR values, at most %d", len(pcrs), MaxPCRs)
	}
	for i, d := range pcrs {
		if i < 0 || i >= MaxPCRs {
			return nil, reject(ReasonMalformed, "PCR index %d out of range 0..%d", i, MaxPCRs-1)
		}
		if len(d) != PCRDigestSize {
			return nil, reject(ReasonMalformed, "PCR %d value of %d bytes, want %d (SHA-256)", i, len(d), PCRDigestSize)
		}
	}
	for _, i := range required {
		if i < 0 || i >= MaxPCRs {
			return nil, errors.New("attest: required PCR index out of range")
		}
	}

	// Step 2: decode.
	att, err := decodeAttest(quote)
	if err != nil {
		return nil, rejectErr(ReasonMalformed, err, "decoding quote TPMS_ATTEST")
	}
	if att.Magic != tpmGenerated {
		return nil, reject(ReasonMalformed, "quote magic 0x%08x is not TPM_GENERATED", att.Magic)
	}
	if att.Type != tpm2.TagAttestQuote || att.AttestedQuoteInfo == nil {
		return nil, reject(ReasonMalformed, "attestation type 0x%04x is not TPM_ST_ATTEST_QUOTE", uint16(att.Type))
	}
	info := att.AttestedQuoteInfo
	sig, err := decodeSignature(signature)
	if err != nil {
		return nil, rejectErr(ReasonMalformed, err, "decoding quote TPMT_SIGNATURE")
	}

	// Step 3: static validation of the selection. The decoder accepts
	// exactly one TPMS_PCR_SELECTION, and canonical re-encoding pins its
	// bitmap to 3 bytes (PCRs 0..23), listed in ascending order: the order
	// in which the TPM hashes them.
	sel := info.PCRSelection
	if sel.Hash != tpm2.AlgSHA256 {
		return nil, reject(ReasonPCRMismatch, "quote selects the bank of hash algorithm 0x%04x, want SHA-256", uint16(sel.Hash))
	}
	if len(info.PCRDigest) != ak.Hash.Size() {
		return nil, reject(ReasonPCRMismatch, "quoted PCR digest of %d bytes, want %d", len(info.PCRDigest), ak.Hash.Size())
	}
	selected := sel.PCRs

	// Step 4: signature by the AK over the exact quote bytes.
	if err := verifyTPMSignature(ak, quote, sig); err != nil {
		return nil, rejectErr(ReasonQuoteSignature, err, "quote is not signed by the AK")
	}

	// Step 5: the nonce the server issued.
	if subtle.ConstantTimeCompare(att.ExtraData, nonce) != 1 {
		return nil, reject(ReasonQuoteNonce, "quote was made over a different nonce")
	}

	// Step 6: PCR policy and the PCR digest.
	for _, i := range required {
		if !pcrSelected(selected, i) {
			return nil, reject(ReasonPCRMismatch, "required PCR %d is not in the quote's selection", i)
		}
	}
	for i := range pcrs {
		if !pcrSelected(selected, i) {
			return nil, reject(ReasonPCRMismatch, "reported PCR %d is not in the quote's selection", i)
		}
	}
	h := ak.Hash.New()
	verified := make(map[int][]byte, len(selected))
	for _, i := range selected {
		d, ok := pcrs[i]
		if !ok {
			return nil, reject(ReasonPCRMismatch, "quoted PCR %d has no reported value", i)
		}
		h.Write(d)
		verified[i] = bytes.Clone(d)
	}
	if !bytes.Equal(h.Sum(nil), info.PCRDigest) {
		return nil, reject(ReasonPCRMismatch, "reported PCR values do not match the quoted PCR digest")
	}
	return verified, nil
}
