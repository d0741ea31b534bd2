package attest

import (
	"crypto"
	"crypto/x509"
	"errors"
)

// VerifyCSR parses a PKCS#10 certificate request (DER, at most MaxCSRSize
// bytes), checks its self-signature (ReasonCSRInvalid, also for unparsable
// input), and that its public key is certifiedKey, the key returned by
// VerifyKeyCertification (ReasonCSRKeyMismatch).
//
// It does NOT look at the requested subject, names or extensions: they are
// untrusted, and the certificate template must come from server policy, not
// from the CSR.
func VerifyCSR(csrDER []byte, certifiedKey crypto.PublicKey) (*x509.CertificateRequest, error) {
	if certifiedKey == nil {
		return nil, errors.New("attest: VerifyCSR needs the certified key")
	}
	// Step 1: bounds and decode (crypto/x509 refuses trailing data).
	if len(csrDER) == 0 || len(csrDER) > MaxCSRSize {
		return nil, reject(ReasonMalformed, "CSR of %d bytes, want 1..%d", len(csrDER), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, rejectErr(ReasonCSRInvalid, err, "parsing CSR")
	}
	// Step 2: proof of possession.
	if err := csr.CheckSignature(); err != nil {
		return nil, rejectErr(ReasonCSRInvalid, err, "CSR signature")
	}
	// Step 3: the key is the TPM key the AK certified.
	if !publicKeysEqual(certifiedKey, csr.PublicKey) {
		return nil, reject(ReasonCSRKeyMismatch, "CSR public key is not the key certified by the AK")
	}
	return csr, nil
}
