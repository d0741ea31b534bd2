package attest

// Every cap on attacker-controlled input lives here. Inputs over a cap are
// ReasonMalformed, checked before any decoding or cryptography.
const (
	// MinNonceSize is the shortest quote nonce accepted: 128 bits keep a
	// guessed or reused nonce improbable. Servers should send 32 bytes.
	MinNonceSize = 16
	// MaxNonceSize bounds the nonce: TPM2B_DATA (the quote's qualifying
	// data) holds at most a TPMT_HA, 64 bytes of SHA-512 digest.
	MaxNonceSize = 64

	// MaxEKCertificateSize bounds an EK certificate (DER). Vendor EK
	// certificates are 1–2 KiB; 16 KiB matches the wire protocol's blob cap.
	MaxEKCertificateSize = 16 << 10
	// MaxPublicKeySize bounds a PKIX-encoded EK public key. An RSA-8192
	// SubjectPublicKeyInfo is about 1.1 KiB.
	MaxPublicKeySize = 2 << 10
	// MaxCSRSize bounds a PKCS#10 certificate request (DER).
	MaxCSRSize = 16 << 10

	// MaxTPMPublicSize bounds a TPMT_PUBLIC (AK or certified key). An
	// RSA-4096 key with a SHA-512 policy digest is under 700 bytes.
	MaxTPMPublicSize = 1 << 10
	// MaxCreationDataSize bounds a TPMS_CREATION_DATA.
	MaxCreationDataSize = 1 << 10
	// MaxAttestSize bounds a TPMS_ATTEST (creation, certify or quote). A
	// one-bank quote with a 64-byte nonce is under 300 bytes.
	MaxAttestSize = 1 << 10
	// MaxQuoteSize bounds the quote passed to VerifyQuote (a TPMS_ATTEST).
	MaxQuoteSize = MaxAttestSize
	// MaxSignatureSize bounds a TPMT_SIGNATURE: an RSA-4096 signature is
	// 518 bytes.
	MaxSignatureSize = 1 << 10

	// MaxPCRs is the number of PCRs in one bank (PC Client TPM profile):
	// indices 0..23.
	MaxPCRs = 24
	// PCRDigestSize is the size of a SHA-256 PCR value.
	PCRDigestSize = 32

	// MinRSABits is the smallest RSA key accepted for an EK, AK or
	// certified key.
	MinRSABits = 2048
	// MaxRSABits bounds RSA keys so one request cannot make the server do
	// arbitrarily expensive RSA operations, and so an RSA public area and
	// signature fit MaxTPMPublicSize and MaxSignatureSize. TPMs implement
	// RSA 2048 and sometimes 3072 or 4096.
	MaxRSABits = 4096

	// ActivationSecretSize is the size of the credential activation
	// secret (go-attestation generates 32 bytes).
	ActivationSecretSize = 32
)
