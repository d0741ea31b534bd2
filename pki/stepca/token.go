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
)

// tokenClaims are the claims of a one-time token, as step-ca's JWK and X5C
// provisioners read them (authority/provisioner/jwk.go, x5c.go).
type tokenClaims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  string   `json:"aud"`
	NotBefore int64    `json:"nbf"`
	IssuedAt  int64    `json:"iat"`
	Expiry    int64    `json:"exp"`
	ID        string   `json:"jti"`
	SANs      []string `json:"sans,omitempty"`
	// Confirmation binds a sign token to one CSR (RFC 7800 cnf with
	// x5rt#S256, the base64url SHA-256 of the CSR's DER): step-ca refuses
	// the token for any other request.
	Confirmation *confirmation `json:"cnf,omitempty"`
}

type confirmation struct {
	CSRSHA256 string `json:"x5rt#S256"`
}

// newToken signs a one-time token for /1.0/sign for the CSR of subject,
// asking for sans.
func (c *config) newToken(subject string, sans []string, csr *x509.CertificateRequest, now time.Time) (string, error) {
	sum := sha256.Sum256(csr.Raw)
	return c.signToken(tokenClaims{
		Audience:     c.audience,
		Subject:      subject,
		SANs:         sans,
		Confirmation: &confirmation{CSRSHA256: base64.RawURLEncoding.EncodeToString(sum[:])},
	}, now)
}

// newRevokeToken signs a one-time token for /1.0/revoke of the certificate
// with the given serial (decimal, as step-ca compares it with the request's).
func (c *config) newRevokeToken(serial string, now time.Time) (string, error) {
	return c.signToken(tokenClaims{Audience: c.revokeAudience, Subject: serial}, now)
}

// signToken fills in issuer, times and a random jti, and signs claims with
// the credential: a JWK token names its key (kid), an X5C token carries
// the certificate chain (x5c).
func (c *config) signToken(claims tokenClaims, now time.Time) (string, error) {
	id := make([]byte, tokenIDBytes)
	if _, err := io.ReadFull(c.rand, id); err != nil {
		return "", fmt.Errorf("reading token id: %w", err)
	}
	claims.Issuer = c.provisioner
	claims.NotBefore, claims.IssuedAt = now.Unix(), now.Unix()
	claims.Expiry = now.Add(TokenLifetime).Unix()
	claims.ID = hex.EncodeToString(id)
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encoding token: %w", err)
	}
	signer, err := c.cred.signer()
	if err != nil {
		return "", err
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
