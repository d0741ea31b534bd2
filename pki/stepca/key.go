package stepca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"go.step.sm/crypto/jose"
)

// ReadProvisionerKey reads a JWK provisioner's private key from keyFile, as
// ParseProvisionerKey, with the password in passwordFile ("" for an
// unencrypted key). Trailing newlines of the password file are ignored.
// Both files are read with at most MaxKeyFileBytes.
func ReadProvisionerKey(keyFile, passwordFile string) (*jose.JSONWebKey, error) {
	data, err := readSecretFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProvisionerKey, err)
	}
	defer clear(data)
	password, err := readPassword(passwordFile)
	if err != nil {
		return nil, err
	}
	defer clear(password)
	key, err := ParseProvisionerKey(data, password)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	return key, nil
}

// ParseProvisionerKey parses a JWK provisioner's private key: a JWK (JSON),
// or a JWK encrypted as a JWE with a password, which is what
// `step crypto jwk create` and `step ca init` write. It never prompts: an
// encrypted key without a password is an error. A key without a key ID
// gets its RFC 7638 thumbprint, which is the ID step-ca gives it. Errors
// wrap ErrProvisionerKey.
func ParseProvisionerKey(data, password []byte) (*jose.JSONWebKey, error) {
	if _, err := jose.ParseEncrypted(string(data)); err == nil {
		if len(password) == 0 {
			return nil, fmt.Errorf("%w: the key is encrypted; give its password", ErrProvisionerKey)
		}
		plain, err := jose.Decrypt(data, jose.WithPassword(password))
		if err != nil {
			return nil, fmt.Errorf("%w: decrypting: wrong password or damaged key", ErrProvisionerKey)
		}
		defer clear(plain)
		data = plain
	}
	key := new(jose.JSONWebKey)
	if err := json.Unmarshal(data, key); err != nil {
		return nil, fmt.Errorf("%w: not a JWK: %w", ErrProvisionerKey, err)
	}
	if key.KeyID == "" {
		kid, err := jose.Thumbprint(key)
		if err != nil {
			return nil, fmt.Errorf("%w: computing key id: %w", ErrProvisionerKey, err)
		}
		key.KeyID = kid
	}
	if _, err := signingAlgorithm(key); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProvisionerKey, err)
	}
	return key, nil
}

// signingAlgorithm checks key is a private signing key with a key ID and
// returns its JWS algorithm: the key's own "alg", or the usual one for
// its type (ES256 for P-256, which step-ca's provisioners use).
func signingAlgorithm(key *jose.JSONWebKey) (jose.SignatureAlgorithm, error) {
	if key == nil {
		return "", errors.New("provisioner key is missing")
	}
	if key.KeyID == "" {
		return "", errors.New("provisioner key has no key id (kid)")
	}
	if key.IsPublic() {
		return "", fmt.Errorf("provisioner key %s is a public key; give the private key", key.KeyID)
	}
	var def jose.SignatureAlgorithm
	switch k := key.Key.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			def = jose.ES256
		case elliptic.P384():
			def = jose.ES384
		case elliptic.P521():
			def = jose.ES512
		}
	case ed25519.PrivateKey:
		def = jose.EdDSA
	case *rsa.PrivateKey:
		def = jose.RS256
	case crypto.Signer:
		def = ""
	default:
		return "", fmt.Errorf("provisioner key %s is a %T, not a private signing key", key.KeyID, key.Key)
	}
	if key.Algorithm != "" {
		return jose.SignatureAlgorithm(key.Algorithm), nil
	}
	if def == "" {
		return "", fmt.Errorf("provisioner key %s has no alg and an unusual type %T; set alg", key.KeyID, key.Key)
	}
	return def, nil
}

// readSecretFile is readSmallFile for a key or its password, which get
// any certificate the provisioner allows signed: like the CA's own keys it
// must be a regular file that neither group nor others can read (0600).
func readSecretFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %v: a provisioner key or password must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	return readSmallFile(path)
}

func readSmallFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxKeyFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxKeyFileBytes {
		clear(data)
		return nil, fmt.Errorf("%s is larger than %d bytes", path, MaxKeyFileBytes)
	}
	return data, nil
}

// readPassword reads a key's password file ("": no password, nil) without
// its trailing newlines; the caller clears it. An empty file is an error.
func readPassword(passwordFile string) ([]byte, error) {
	if passwordFile == "" {
		return nil, nil
	}
	password, err := readSecretFile(passwordFile)
	if err != nil {
		return nil, fmt.Errorf("%w: password: %w", ErrProvisionerKey, err)
	}
	trimmed := bytes.TrimRight(password, "\r\n")
	if len(trimmed) == 0 {
		clear(password)
		return nil, fmt.Errorf("%w: password file %s is empty", ErrProvisionerKey, passwordFile)
	}
	return trimmed, nil
}
