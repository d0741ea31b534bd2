package stepca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/pemutil"
)

// X5CCredential is what enrolld holds for an X5C provisioner of the
// step-ca: a certificate chain that verifies to the provisioner's roots,
// and the private key of its leaf. Every token carries the chain in its
// x5c header and is signed with the key; step-ca verifies the chain
// against the provisioner's roots at its own clock, for clientAuth.
type X5CCredential struct {
	// Chain is the leaf, then its intermediates (not the provisioner's
	// root), at most MaxChainCerts certificates.
	Chain []*x509.Certificate
	// Key is the leaf's private key: a software key or any crypto.Signer.
	Key crypto.Signer
}

// credential signs one-time tokens: a JWK provisioner's key or an X5C
// credential, exactly one of them set.
type credential struct {
	jwk *jose.JSONWebKey
	x5c *X5CCredential
	// x5cHeader is the x5c header: the chain's DER, standard base64.
	x5cHeader []string
	alg       jose.SignatureAlgorithm
}

// isX5C reports whether tokens are for an X5C provisioner.
func (c *credential) isX5C() bool { return c.x5c != nil }

// kind is the provisioner type the credential is for, as step-ca lists it.
func (c *credential) kind() string {
	if c.isX5C() {
		return "X5C"
	}
	return "JWK"
}

// String names the credential in errors and logs.
func (c *credential) String() string {
	if c.isX5C() {
		leaf := c.x5c.Chain[0]
		return fmt.Sprintf("x5c certificate %.80q (serial %s)", leaf.Subject.CommonName, leaf.SerialNumber.Text(16))
	}
	return "key id " + c.jwk.KeyID
}

// signer returns a JWS signer for a token.
func (c *credential) signer() (jose.Signer, error) {
	opts := new(jose.SignerOptions).WithType("JWT")
	var key any
	if c.isX5C() {
		key = c.x5c.Key
		opts = opts.WithHeader("x5c", c.x5cHeader)
	} else {
		key = c.jwk.Key
		opts = opts.WithHeader("kid", c.jwk.KeyID)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: c.alg, Key: key}, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProvisionerKey, err)
	}
	return s, nil
}

// checkTime checks that the X5C chain is valid at now and, when
// minRemaining > 0, that its leaf stays valid that much longer
// (ErrCredentialExpired). A JWK key has no validity.
func (c *credential) checkTime(now time.Time, minRemaining time.Duration) error {
	if !c.isX5C() {
		return nil
	}
	for i, cert := range c.x5c.Chain {
		if now.Before(cert.NotBefore) || !now.Before(cert.NotAfter) {
			return fmt.Errorf("%w: x5c certificate %d (%.80q) is valid from %s to %s, and now is %s", ErrCredentialExpired, i,
				cert.Subject.CommonName, cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	if leaf := c.x5c.Chain[0]; minRemaining > 0 && leaf.NotAfter.Sub(now) < minRemaining {
		return fmt.Errorf("%w: the x5c certificate expires at %s, less than %s from now, and no device certificate may outlive it; renew it",
			ErrCredentialExpired, leaf.NotAfter.UTC().Format(time.RFC3339), minRemaining)
	}
	return nil
}

// newX5CCredential checks x5c the way step-ca's X5C provisioner will,
// except for what needs the provisioner's roots or a clock (Check and
// every call do those): a chain of 1 to MaxChainCerts certificates, each
// signed by the next; the key is the leaf's; the leaf may sign
// (digitalSignature) and be used for clientAuth (step-ca verifies the
// chain for it); the key type has a JWS algorithm.
func newX5CCredential(x5c *X5CCredential) (credential, error) {
	chain := x5c.Chain
	switch {
	case len(chain) == 0:
		return credential{}, errors.New("x5c credential has no certificate")
	case len(chain) > MaxChainCerts:
		return credential{}, fmt.Errorf("x5c chain has %d certificates; at most %d", len(chain), MaxChainCerts)
	case slices.Contains(chain, nil):
		return credential{}, errors.New("x5c chain holds a nil certificate")
	case x5c.Key == nil:
		return credential{}, errors.New("x5c credential has no private key")
	}
	leaf := chain[0]
	if !publicKeysEqual(x5c.Key.Public(), leaf.PublicKey) {
		return credential{}, fmt.Errorf("the x5c key is not the key of certificate %.80q", leaf.Subject.CommonName)
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return credential{}, fmt.Errorf("x5c certificate %.80q lacks the digitalSignature key usage; step-ca refuses tokens it signs", leaf.Subject.CommonName)
	}
	if len(leaf.ExtKeyUsage)+len(leaf.UnknownExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return credential{}, fmt.Errorf("x5c certificate %.80q lacks the clientAuth extended key usage; step-ca verifies the chain for it", leaf.Subject.CommonName)
	}
	for i := 1; i < len(chain); i++ {
		if err := chain[i-1].CheckSignatureFrom(chain[i]); err != nil {
			return credential{}, fmt.Errorf("x5c certificate %d (%.80q) is not signed by certificate %d (%.80q); give the leaf first, then its issuers: %w",
				i-1, chain[i-1].Subject.CommonName, i, chain[i].Subject.CommonName, err)
		}
	}
	alg, err := x5cAlgorithm(x5c.Key.Public())
	if err != nil {
		return credential{}, err
	}
	header := make([]string, len(chain))
	for i, cert := range chain {
		header[i] = base64.StdEncoding.EncodeToString(cert.Raw)
	}
	return credential{x5c: &X5CCredential{Chain: slices.Clone(chain), Key: x5c.Key}, x5cHeader: header, alg: alg}, nil
}

// x5cAlgorithm is the JWS algorithm for the key type, as step signs X5C
// tokens.
func x5cAlgorithm(pub crypto.PublicKey) (jose.SignatureAlgorithm, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
		return "", fmt.Errorf("x5c key is on an unsupported curve %s", k.Curve.Params().Name)
	case *rsa.PublicKey:
		return jose.RS256, nil
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	default:
		return "", fmt.Errorf("x5c key is a %T; use ECDSA, RSA or Ed25519", pub)
	}
}

// ReadX5CCredential reads an X5C credential: certFile holds the chain as
// PEM (leaf first, then intermediates), keyFile the leaf's private key as
// PEM (PKCS#8, SEC 1 or PKCS#1), encrypted with the password in
// passwordFile or unencrypted ("" then), which is what `step certificate
// create` writes. Trailing newlines of the password file are ignored. Each
// file is read with at most MaxKeyFileBytes. It does not check the
// validity period: Check and each call do. Errors wrap ErrProvisionerKey.
func ReadX5CCredential(certFile, keyFile, passwordFile string) (*X5CCredential, error) {
	certPEM, err := readSmallFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("%w: x5c certificate: %w", ErrProvisionerKey, err)
	}
	keyPEM, err := readSecretFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: x5c key: %w", ErrProvisionerKey, err)
	}
	defer clear(keyPEM)
	password, err := readPassword(passwordFile)
	if err != nil {
		return nil, err
	}
	defer clear(password)
	cred, err := ParseX5CCredential(certPEM, keyPEM, password)
	if err != nil {
		return nil, fmt.Errorf("%s, %s: %w", certFile, keyFile, err)
	}
	return cred, nil
}

// ParseX5CCredential parses an X5C credential from PEM, as
// ReadX5CCredential, and checks it as New does (chain order, key match,
// key usages). It never prompts: an encrypted key without a password is an
// error. Errors wrap ErrProvisionerKey.
func ParseX5CCredential(certPEM, keyPEM, password []byte) (*X5CCredential, error) {
	var chain []*x509.Certificate
	for rest := certPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(chain) > 0 && len(bytes.TrimSpace(rest)) != 0 {
				return nil, fmt.Errorf("%w: x5c certificate file has trailing data that is not PEM", ErrProvisionerKey)
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: x5c certificate file holds a %q PEM block; want certificates only", ErrProvisionerKey, block.Type)
		}
		if len(chain) == MaxChainCerts {
			return nil, fmt.Errorf("%w: x5c certificate file holds more than %d certificates", ErrProvisionerKey, MaxChainCerts)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: x5c certificate %d: %w", ErrProvisionerKey, len(chain), err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: x5c certificate file holds no PEM certificate", ErrProvisionerKey)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("%w: x5c key file holds no PEM key", ErrProvisionerKey)
	}
	encrypted := block.Type == "ENCRYPTED PRIVATE KEY" || strings.Contains(block.Headers["Proc-Type"], "ENCRYPTED")
	if encrypted && len(password) == 0 {
		return nil, fmt.Errorf("%w: the x5c key is encrypted; give its password", ErrProvisionerKey)
	}
	var opts []pemutil.Options
	if encrypted {
		opts = append(opts, pemutil.WithPassword(password))
	}
	parsed, err := pemutil.Parse(keyPEM, opts...)
	if err != nil {
		if encrypted {
			return nil, fmt.Errorf("%w: decrypting the x5c key: wrong password or damaged key", ErrProvisionerKey)
		}
		return nil, fmt.Errorf("%w: x5c key: %w", ErrProvisionerKey, err)
	}
	key, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: x5c key file holds a %T, not a private key", ErrProvisionerKey, parsed)
	}
	cred := &X5CCredential{Chain: chain, Key: key}
	if _, err := newX5CCredential(cred); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrProvisionerKey, err)
	}
	return cred, nil
}
