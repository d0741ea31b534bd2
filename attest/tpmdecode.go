package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"

	"github.com/google/go-tpm/legacy/tpm2"
)

// TPM structures (TPM 2.0 Part 2) are decoded with go-tpm's legacy/tpm2
// decoders, the ones go-attestation itself uses, and then held to a strict
// standard: those decoders ignore trailing bytes and tolerate some short
// reads, so every structure must re-encode to exactly the input
// (signatures, whose ECDSA re-encoding drops leading zeros, must instead be
// consumed exactly). go-tpm's newer reflection-based tpm2 package would also
// do, but costs ten times as much CPU per structure, which is most of the
// server's attestation budget.

// errNonCanonical reports trailing or non-canonically encoded bytes.
var errNonCanonical = errors.New("trailing or non-canonical bytes")

// decodePublic decodes exactly one TPMT_PUBLIC (Part 2, 12.2.4).
func decodePublic(b []byte) (*tpm2.Public, error) {
	pub, err := tpm2.DecodePublic(b)
	if err != nil {
		return nil, err
	}
	enc, err := pub.Encode()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(enc, b) {
		return nil, errNonCanonical
	}
	return &pub, nil
}

// decodeAttest decodes exactly one TPMS_ATTEST (Part 2, 10.12.12) of the
// creation, certify or quote kind; the decoder requires magic TPM_GENERATED.
func decodeAttest(b []byte) (*tpm2.AttestationData, error) {
	att, err := tpm2.DecodeAttestationData(b)
	if err != nil {
		return nil, err
	}
	enc, err := att.Encode()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(enc, b) {
		return nil, errNonCanonical
	}
	return att, nil
}

// decodeCreationData decodes exactly one TPMS_CREATION_DATA (Part 2, 15.1).
func decodeCreationData(b []byte) (*tpm2.CreationData, error) {
	cd, err := tpm2.DecodeCreationData(b)
	if err != nil {
		return nil, err
	}
	enc, err := cd.EncodeCreationData()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(enc, b) {
		return nil, errNonCanonical
	}
	return cd, nil
}

// decodeSignature decodes exactly one TPMT_SIGNATURE (Part 2, 11.3.4) of
// the RSASSA, RSAPSS or ECDSA kind.
func decodeSignature(b []byte) (*tpm2.Signature, error) {
	buf := bytes.NewBuffer(b)
	sig, err := tpm2.DecodeSignature(buf)
	if err != nil {
		return nil, err
	}
	if buf.Len() != 0 {
		return nil, errNonCanonical
	}
	return sig, nil
}

// hashFromTPM maps a TPMI_ALG_HASH to a crypto.Hash. SHA-1 is refused.
func hashFromTPM(alg tpm2.Algorithm) (crypto.Hash, error) {
	switch alg {
	case tpm2.AlgSHA256:
		return crypto.SHA256, nil
	case tpm2.AlgSHA384:
		return crypto.SHA384, nil
	case tpm2.AlgSHA512:
		return crypto.SHA512, nil
	default:
		return 0, fmt.Errorf("hash algorithm 0x%04x not accepted", uint16(alg))
	}
}

// hashToTPM is the inverse of hashFromTPM.
func hashToTPM(h crypto.Hash) (tpm2.Algorithm, error) {
	switch h {
	case crypto.SHA256:
		return tpm2.AlgSHA256, nil
	case crypto.SHA384:
		return tpm2.AlgSHA384, nil
	case crypto.SHA512:
		return tpm2.AlgSHA512, nil
	default:
		return 0, fmt.Errorf("hash %v not accepted", h)
	}
}

// tpmPublicKey extracts the asymmetric key of a TPMT_PUBLIC and checks it
// is an acceptable RSA (MinRSABits..MaxRSABits, modulus length equal to
// keyBits, odd exponent) or ECDSA (P-256, P-384, point on the curve) key.
func tpmPublicKey(pub *tpm2.Public) (crypto.PublicKey, error) {
	switch pub.Type {
	case tpm2.AlgRSA:
		p := pub.RSAParameters
		if p == nil {
			return nil, errors.New("RSA key without RSA parameters")
		}
		bits := int(p.KeyBits)
		if bits < MinRSABits || bits > MaxRSABits {
			return nil, fmt.Errorf("RSA key of %d bits, want %d..%d", bits, MinRSABits, MaxRSABits)
		}
		n := p.Modulus()
		if n.BitLen() != bits {
			return nil, fmt.Errorf("RSA modulus of %d bits, keyBits says %d", n.BitLen(), bits)
		}
		e := p.Exponent() // 0 means the default 65537 (Part 2, 12.2.3.5)
		if e < 3 || e%2 == 0 || e > 1<<31-1 {
			return nil, fmt.Errorf("RSA exponent %d not accepted", e)
		}
		return &rsa.PublicKey{N: n, E: int(e)}, nil
	case tpm2.AlgECC:
		p := pub.ECCParameters
		if p == nil {
			return nil, errors.New("ECC key without ECC parameters")
		}
		var curve elliptic.Curve
		switch p.CurveID {
		case tpm2.CurveNISTP256:
			curve = elliptic.P256()
		case tpm2.CurveNISTP384:
			curve = elliptic.P384()
		default:
			return nil, fmt.Errorf("ECC curve 0x%04x not accepted", uint16(p.CurveID))
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(p.Point.XRaw) > size || len(p.Point.YRaw) > size {
			return nil, errors.New("ECC point coordinates longer than the curve")
		}
		k := &ecdsa.PublicKey{Curve: curve, X: p.Point.X(), Y: p.Point.Y()}
		if _, err := k.ECDH(); err != nil { // refuses points off the curve
			return nil, fmt.Errorf("ECC point: %w", err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("key type 0x%04x not accepted", uint16(pub.Type))
	}
}

// signingHash returns the hash of a key's signing scheme: RSASSA for RSA,
// ECDSA for ECC. Other schemes (PSS, ECDAA, SM2, Schnorr, null) are refused.
func signingHash(pub *tpm2.Public) (crypto.Hash, error) {
	var scheme *tpm2.SigScheme
	var want tpm2.Algorithm
	switch pub.Type {
	case tpm2.AlgRSA:
		if pub.RSAParameters == nil {
			return 0, errors.New("RSA key without RSA parameters")
		}
		scheme, want = pub.RSAParameters.Sign, tpm2.AlgRSASSA
	case tpm2.AlgECC:
		if pub.ECCParameters == nil {
			return 0, errors.New("ECC key without ECC parameters")
		}
		scheme, want = pub.ECCParameters.Sign, tpm2.AlgECDSA
	default:
		return 0, fmt.Errorf("key type 0x%04x cannot sign", uint16(pub.Type))
	}
	if scheme == nil {
		return 0, errors.New("no signing scheme")
	}
	if scheme.Alg != want {
		return 0, fmt.Errorf("signing scheme 0x%04x, want 0x%04x", uint16(scheme.Alg), uint16(want))
	}
	return hashFromTPM(scheme.Hash)
}

// verifyTPMSignature checks a decoded TPMT_SIGNATURE over msg with the AK:
// the signature's scheme and hash must be the AK's own.
func verifyTPMSignature(ak *AKPublic, msg []byte, sig *tpm2.Signature) error {
	wantHash, err := hashToTPM(ak.Hash)
	if err != nil {
		return err
	}
	h := ak.Hash.New()
	h.Write(msg)
	digest := h.Sum(nil)

	switch pub := ak.Public.(type) {
	case *rsa.PublicKey:
		if sig.Alg != tpm2.AlgRSASSA || sig.RSA == nil {
			return fmt.Errorf("signature scheme 0x%04x, AK signs with RSASSA", uint16(sig.Alg))
		}
		if sig.RSA.HashAlg != wantHash {
			return fmt.Errorf("signature hash 0x%04x, AK signs with 0x%04x", uint16(sig.RSA.HashAlg), uint16(wantHash))
		}
		return rsa.VerifyPKCS1v15(pub, ak.Hash, digest, sig.RSA.Signature)
	case *ecdsa.PublicKey:
		if sig.Alg != tpm2.AlgECDSA || sig.ECC == nil {
			return fmt.Errorf("signature scheme 0x%04x, AK signs with ECDSA", uint16(sig.Alg))
		}
		if sig.ECC.HashAlg != wantHash {
			return fmt.Errorf("signature hash 0x%04x, AK signs with 0x%04x", uint16(sig.ECC.HashAlg), uint16(wantHash))
		}
		if !ecdsa.Verify(pub, digest, sig.ECC.R, sig.ECC.S) {
			return errors.New("ECDSA signature does not verify")
		}
		return nil
	default:
		return fmt.Errorf("AK key type %T not supported", ak.Public)
	}
}

// pcrSelected reports whether index is in the ascending list sel.
func pcrSelected(sel []int, index int) bool {
	for _, i := range sel {
		if i == index {
			return true
		}
	}
	return false
}

// publicKeysEqual reports whether two public keys are the same key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
