package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// AttestationParameters are the AK's creation parameters, as produced by
// go-attestation's AK.AttestationParameters: TPMT_PUBLIC, TPMS_CREATION_DATA,
// TPMS_ATTEST (TPM_ST_ATTEST_CREATION) and TPMT_SIGNATURE encodings.
// Untrusted until attest.VerifyAKParameters accepts them.
type AttestationParameters struct {
	Public            []byte `json:"public"`
	CreateData        []byte `json:"create_data"`
	CreateAttestation []byte `json:"create_attestation"`
	CreateSignature   []byte `json:"create_signature"`
}

// CertificationParameters certify a TPM key by the AK: TPMT_PUBLIC of the
// key, TPMS_ATTEST (TPM_ST_ATTEST_CERTIFY) and the AK's TPMT_SIGNATURE.
type CertificationParameters struct {
	Public            []byte `json:"public"`
	CreateAttestation []byte `json:"create_attestation"`
	CreateSignature   []byte `json:"create_signature"`
}

// DeviceInfo is self-reported and untrusted: it is recorded for operators,
// never used for a decision.
type DeviceInfo struct {
	Hostname     string `json:"hostname,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
}

// BeginRequest starts an enrollment. EKPublic is always sent (PKIX DER);
// EKCertificate (DER) is sent when the TPM has one, and must then carry the
// same public key.
type BeginRequest struct {
	EKPublic      []byte                `json:"ek_public"`
	EKCertificate []byte                `json:"ek_certificate,omitempty"`
	AK            AttestationParameters `json:"ak"`
	Device        DeviceInfo            `json:"device,omitzero"`
}

// EncryptedCredential is the TPM2_MakeCredential output the device passes
// to TPM2_ActivateCredential.
type EncryptedCredential struct {
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
}

// BeginResponse carries the activation challenge and the quote nonce.
type BeginResponse struct {
	SessionID string              `json:"session_id"`
	DeviceID  string              `json:"device_id"`
	Challenge EncryptedCredential `json:"challenge"`
	Nonce     []byte              `json:"nonce"`
	// PCRs the device must quote, from the SHA-256 bank.
	PCRs      []int     `json:"pcrs"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Quote is a TPM2_Quote: the TPMS_ATTEST and its TPMT_SIGNATURE.
type Quote struct {
	Quote     []byte `json:"quote"`
	Signature []byte `json:"signature"`
}

// PCR is one SHA-256 PCR value the device reports; the quote's PCR digest
// proves them.
type PCR struct {
	Index  int    `json:"index"`
	Digest []byte `json:"digest"`
}

// FinishRequest answers the challenge and asks for a certificate.
type FinishRequest struct {
	SessionID string `json:"session_id"`
	// ActivationProof is ActivationProof(secret, SessionID): it proves the
	// TPM recovered the secret without sending the secret itself.
	ActivationProof []byte                  `json:"activation_proof"`
	Quote           Quote                   `json:"quote"`
	PCRs            []PCR                   `json:"pcrs"`
	Key             CertificationParameters `json:"key"`
	// CSR is a PKCS#10 request (DER) signed by the certified TPM key.
	CSR []byte `json:"csr"`
	// EventLog is the TCG firmware event log (binary_bios_measurements),
	// empty when the platform has none. Untrusted until replayed against
	// the quoted PCRs.
	EventLog []byte `json:"event_log,omitempty"`
}

// FinishResponse delivers the device certificate and its config bundle.
type FinishResponse struct {
	DeviceID string `json:"device_id"`
	// CertificateChain is DER, leaf first, up to but excluding the root.
	CertificateChain [][]byte  `json:"certificate_chain"`
	NotAfter         time.Time `json:"not_after"`
	// Bundle is the signed config bundle (compact JWS), see pki.VerifyBundle.
	Bundle string `json:"bundle"`
}

// WhoamiResponse answers an mTLS call with what the server read from the
// caller's certificate.
type WhoamiResponse struct {
	DeviceID string    `json:"device_id"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

// activationProofLabel domain-separates the activation proof from any other
// use of the activation secret (such as sealing keys).
const activationProofLabel = "edgeenroll/v1 activation proof\x00"

// ActivationProof is HMAC-SHA-256 keyed with the credential activation
// secret over a fixed label and the session ID. Both sides compute it; only
// a TPM holding the EK can recover the secret, and the secret itself never
// travels.
func ActivationProof(secret []byte, sessionID string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(activationProofLabel))
	m.Write([]byte(sessionID))
	return m.Sum(nil)
}

// Validate checks the shape of a begin request.
func (r *BeginRequest) Validate() error {
	if err := blob("ek_public", r.EKPublic, true); err != nil {
		return err
	}
	if err := blob("ek_certificate", r.EKCertificate, false); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{
		{"ak.public", r.AK.Public},
		{"ak.create_data", r.AK.CreateData},
		{"ak.create_attestation", r.AK.CreateAttestation},
		{"ak.create_signature", r.AK.CreateSignature},
	} {
		if err := blob(f.name, f.b, true); err != nil {
			return err
		}
	}
	if err := text("device.hostname", r.Device.Hostname); err != nil {
		return err
	}
	return text("device.agent_version", r.Device.AgentVersion)
}

// Validate checks the shape of a begin answer, as a device must before it
// keeps the answer or hands any of it to its TPM: a server or MQTT broker
// that sends PCR index -9 must get an error, not a crash in the TPM
// encoding.
func (r *BeginResponse) Validate() error {
	if err := ValidateSessionID(r.SessionID); err != nil {
		return err
	}
	if !ValidDeviceID(r.DeviceID) {
		return Errorf(CodeBadRequest, "device_id must be 64 lowercase hex characters")
	}
	if err := blob("challenge.credential", r.Challenge.Credential, true); err != nil {
		return err
	}
	if err := blob("challenge.secret", r.Challenge.Secret, true); err != nil {
		return err
	}
	if len(r.Nonce) < MinNonceSize || len(r.Nonce) > MaxNonceSize {
		return Errorf(CodeBadRequest, "nonce must be %d to %d bytes, got %d", MinNonceSize, MaxNonceSize, len(r.Nonce))
	}
	if len(r.PCRs) == 0 {
		return Errorf(CodeBadRequest, "pcrs must list 1 to %d PCRs, got none", MaxPCRs)
	}
	if err := pcrIndexes("pcrs", r.PCRs); err != nil {
		return err
	}
	if r.ExpiresAt.IsZero() {
		return Errorf(CodeBadRequest, "expires_at is missing")
	}
	return nil
}

// Validate checks the shape of a finish request.
func (r *FinishRequest) Validate() error {
	if err := ValidateSessionID(r.SessionID); err != nil {
		return err
	}
	if len(r.ActivationProof) != ActivationProofSize {
		return Errorf(CodeBadRequest, "activation_proof must be %d bytes, got %d", ActivationProofSize, len(r.ActivationProof))
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{
		{"quote.quote", r.Quote.Quote},
		{"quote.signature", r.Quote.Signature},
		{"key.public", r.Key.Public},
		{"key.create_attestation", r.Key.CreateAttestation},
		{"key.create_signature", r.Key.CreateSignature},
		{"csr", r.CSR},
	} {
		if err := blob(f.name, f.b, true); err != nil {
			return err
		}
	}
	if len(r.EventLog) > MaxEventLogBytes {
		return Errorf(CodeBadRequest, "event_log is %d bytes, limit is %d", len(r.EventLog), MaxEventLogBytes)
	}
	if len(r.PCRs) == 0 || len(r.PCRs) > MaxPCRs {
		return Errorf(CodeBadRequest, "pcrs must list 1 to %d values, got %d", MaxPCRs, len(r.PCRs))
	}
	seen := make(map[int]bool, len(r.PCRs))
	for i, p := range r.PCRs {
		if p.Index < 0 || p.Index >= MaxPCRs {
			return Errorf(CodeBadRequest, "pcrs[%d].index %d is out of range 0..%d", i, p.Index, MaxPCRs-1)
		}
		if seen[p.Index] {
			return Errorf(CodeBadRequest, "pcrs[%d]: PCR %d listed twice", i, p.Index)
		}
		seen[p.Index] = true
		if len(p.Digest) != sha256.Size {
			return Errorf(CodeBadRequest, "pcrs[%d].digest must be a %d-byte SHA-256 value, got %d bytes", i, sha256.Size, len(p.Digest))
		}
	}
	return nil
}

// ValidateSessionID checks a session ID is of the form the server issues.
func ValidateSessionID(id string) error {
	if len(id) != SessionIDLen {
		return Errorf(CodeBadRequest, "session_id must be %d hex characters, got %d", SessionIDLen, len(id))
	}
	// Not hex.DecodeString: it also accepts upper case, which the server
	// never issues.
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return Errorf(CodeBadRequest, "session_id must be lowercase hex")
		}
	}
	return nil
}

// ValidDeviceID reports whether id has the form of a device ID: 64
// lowercase hex characters (SHA-256 of the EK public key, PKIX DER).
func ValidDeviceID(id string) bool {
	if len(id) != 2*sha256.Size {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ValidCorrelationID reports whether a client-sent correlation ID may be
// adopted: 1..MaxCorrelationIDLen characters of [A-Za-z0-9._-].
func ValidCorrelationID(id string) bool {
	if len(id) == 0 || len(id) > MaxCorrelationIDLen {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func blob(name string, b []byte, required bool) error {
	if required && len(b) == 0 {
		return Errorf(CodeBadRequest, "%s is required", name)
	}
	if len(b) > MaxBlobBytes {
		return Errorf(CodeBadRequest, "%s is %d bytes, limit is %d", name, len(b), MaxBlobBytes)
	}
	return nil
}

func text(name, s string) error {
	if len(s) > MaxDeviceInfoLen {
		return Errorf(CodeBadRequest, "%s is %d bytes, limit is %d", name, len(s), MaxDeviceInfoLen)
	}
	if !utf8.ValidString(s) {
		return Errorf(CodeBadRequest, "%s is not valid UTF-8", name)
	}
	for _, c := range s {
		if unicode.IsControl(c) { // C0, DEL and C1 (such as U+009B CSI)
			return Errorf(CodeBadRequest, "%s contains control character %U", name, c)
		}
	}
	return nil
}

// String renders a code for logs.
func (c Code) String() string { return string(c) }

var _ fmt.Stringer = Code("")

// pcrIndexes checks a list of PCR indexes of one bank: at most MaxPCRs,
// each in 0..MaxPCRs-1, none twice.
func pcrIndexes(field string, pcrs []int) error {
	if len(pcrs) > MaxPCRs {
		return Errorf(CodeBadRequest, "%s lists %d PCRs, at most %d", field, len(pcrs), MaxPCRs)
	}
	seen := make(map[int]bool, len(pcrs))
	for i, p := range pcrs {
		if p < 0 || p >= MaxPCRs {
			return Errorf(CodeBadRequest, "%s[%d] %d is out of range 0..%d", field, i, p, MaxPCRs-1)
		}
		if seen[p] {
			return Errorf(CodeBadRequest, "%s[%d]: PCR %d listed twice", field, i, p)
		}
		seen[p] = true
	}
	return nil
}
