package api

import "time"

// Every cap of the wire protocol lives here.
const (
	// MaxRequestBytes bounds any request body. Begin carries an EK
	// certificate (typically 1–2 KiB) and AK parameters (<1 KiB); finish
	// carries a quote, PCR values, key certification and a CSR (<8 KiB).
	// 64 KiB leaves room for large vendor EK certificates without letting a
	// client make the server buffer megabytes.
	MaxRequestBytes = 64 << 10

	// MaxEventLogBytes bounds the TCG event log a device sends with
	// finish. Firmware logs are typically 20–100 KiB; 1 MiB leaves room
	// for large boot chains.
	MaxEventLogBytes = 1 << 20

	// MaxFinishRequestBytes bounds a finish body: the other fields plus the
	// event log in base64.
	MaxFinishRequestBytes = MaxRequestBytes + (MaxEventLogBytes+2)/3*4

	// MaxResponseBytes bounds what a device reads back: a certificate chain
	// and a config bundle.
	MaxResponseBytes = 1 << 20

	// MaxBlobBytes bounds any single binary field (EK certificate, TPM
	// structures, CSR).
	MaxBlobBytes = 16 << 10

	// MaxPCRs is the number of PCRs of one TPM bank.
	MaxPCRs = 24

	// MaxDeviceInfoLen bounds each free-text device info field.
	MaxDeviceInfoLen = 256

	// NonceSize is the size of the server's quote nonce: 32 bytes gives
	// 256 bits of unpredictability, and fits TPM2B_DATA for SHA-256 AKs.
	NonceSize = 32

	// MinNonceSize is the smallest nonce a verifier accepts.
	MinNonceSize = 16
	// MaxNonceSize is the largest nonce a device accepts: TPM2_Quote's
	// qualifyingData is a TPM2B_DATA, at most a SHA-512 digest.
	MaxNonceSize = 64

	// SessionIDLen is the length of a session ID in hex characters.
	SessionIDLen = 32

	// MaxCorrelationIDLen bounds the correlation ID header.
	MaxCorrelationIDLen = 64

	// ActivationProofSize is the size of the HMAC-SHA-256 activation proof.
	ActivationProofSize = 32

	// DefaultSessionTTL is how long a begun enrollment session can be
	// finished.
	DefaultSessionTTL = 2 * time.Minute

	// maxJSONErrorLen bounds, in characters, a JSON decoder error quoted
	// in a bad_request message: it echoes member names the client chose.
	maxJSONErrorLen = 256
)
