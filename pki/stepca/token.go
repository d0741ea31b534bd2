package stepca

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"go.step.sm/crypto/jose"
)

// tokenClaims are the claims of a one-time token for /1.0/sign, as step-ca's
// JWK provisioner reads them (authority/provisioner/jwk.go).
type tokenClaims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  string   `json:"aud"`
	NotBefore int64    `json:"nbf"`
	IssuedAt  int64    `json:"iat"`
	Expiry    int64    `json:"exp"`
	ID        string   `json:"jti"`
	SANs      []string `json:"sans"`
	// Confirmation binds the token to one CSR (RFC 7800 cnf with
	// x5rt#S256, the base64url SHA-256 of the CSR's DER): step-ca refuses
	// the token for any other request.
	Confirmation confirmation `json:"cnf"`
}

type confirmation struct {
	CSRSHA256 string `json:"x5rt#S256"`
}

// newToken signs a one-time token for the CSR of subject, asking for sans.
func (c *config) newToken(subject string, sans []string, csr *x509.CertificateRequest, now time.Time) (string, error) {
	id := make([]byte, tokenIDBytes)
	if _, err := io.ReadFull(c.rand, id); err != nil {
		return "", fmt.Errorf("reading token id: %w", err)
	}
	sum := sha256.Sum256(csr.Raw)
	payload, err := json.Marshal(tokenClaims{
		Issuer:       c.provisioner,
		Subject:      subject,
		Audience:     c.audience,
		NotBefore:    now.Unix(),
		IssuedAt:     now.Unix(),
		Expiry:       now.Add(TokenLifetime).Unix(),
		ID:           hex.EncodeToString(id),
		SANs:         sans,
		Confirmation: confirmation{CSRSHA256: base64.RawURLEncoding.EncodeToString(sum[:])},
	})
	if err != nil {
		return "", fmt.Errorf("encoding token: %w", err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: c.alg, Key: c.key.Key},
		new(jose.SignerOptions).WithType("JWT").WithHeader("kid", c.key.KeyID))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrProvisionerKey, err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("%w: signing token: %w", ErrProvisionerKey, err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("serializing token: %w", err)
	}
	return tok, nil
}
