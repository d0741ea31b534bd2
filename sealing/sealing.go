// Package sealing protects enrollment answers end to end through an MQTT
// broker that can read every message: the server seals a response with a
// key that only the device's TPM can rebuild, because it derives from the
// credential-activation secret (recovered by TPM2_ActivateCredential, never
// sent on the wire). A broker operator can neither read nor alter a sealed
// payload, nor move it to another session.
//
// Key = HKDF-SHA-256(secret, salt = session ID, info = label), AEAD =
// AES-256-GCM with a random 96-bit nonce; the session ID and the message ID
// are authenticated as additional data.
package sealing

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
)

// label domain-separates the sealing key from every other use of the
// activation secret (the activation proof has its own label).
const label = "edgeenroll/v1 mqtt response seal"

// KeySize is the AES-256 key size.
const KeySize = 32

// MaxSealed bounds a sealed payload: a certificate chain and a bundle.
const MaxSealed = 1 << 20

// ErrOpen: the sealed payload is not authentic for this key, session and
// message (tampered, replayed elsewhere, or for another device).
var ErrOpen = errors.New("sealing: payload is not authentic")

// Key derives the sealing key of a session from its activation secret.
func Key(secret []byte, sessionID string) ([]byte, error) {
	if len(secret) < 16 {
		return nil, fmt.Errorf("sealing: activation secret of %d bytes is too short", len(secret))
	}
	return hkdf.Key(sha256.New, secret, []byte(sessionID), label, KeySize)
}

// Seal encrypts and authenticates plaintext for (sessionID, messageID).
func Seal(key []byte, sessionID, messageID string, plaintext []byte) ([]byte, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	if err := checkIDs(sessionID, messageID); err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plaintext, aad(sessionID, messageID)), nil
}

// Open authenticates and decrypts a sealed payload; any tampering, or a
// payload sealed for another session or message, is ErrOpen.
func Open(key []byte, sessionID, messageID string, sealed []byte) ([]byte, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	if err := checkIDs(sessionID, messageID); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOpen, err)
	}
	if len(sealed) > MaxSealed {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrOpen, len(sealed), MaxSealed)
	}
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("%w: too short", ErrOpen)
	}
	n := aead.NonceSize()
	out, err := aead.Open(nil, sealed[:n], sealed[n:], aad(sessionID, messageID))
	if err != nil {
		return nil, ErrOpen
	}
	return out, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("sealing: key of %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// maxIDLen is the longest session or message ID aad can length-prefix:
// past it the 2-byte prefix would wrap, and two (session, message) pairs
// could encode alike. Real IDs are far shorter (32 and 8..64 characters).
const maxIDLen = 1<<16 - 1

func checkIDs(sessionID, messageID string) error {
	if len(sessionID) > maxIDLen || len(messageID) > maxIDLen {
		return fmt.Errorf("sealing: session ID of %d bytes or message ID of %d bytes, at most %d each", len(sessionID), len(messageID), maxIDLen)
	}
	return nil
}

// aad binds the ciphertext to its session and message, length-prefixed so
// no two pairs encode alike.
func aad(sessionID, messageID string) []byte {
	b := make([]byte, 0, 4+len(sessionID)+len(messageID))
	b = append(b, byte(len(sessionID)>>8), byte(len(sessionID)))
	b = append(b, sessionID...)
	b = append(b, byte(len(messageID)>>8), byte(len(messageID)))
	return append(b, messageID...)
}
