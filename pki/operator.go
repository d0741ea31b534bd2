package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"go.step.sm/crypto/x509util"
)

// ErrOperatorIdentity: a certificate names no valid operator.
var ErrOperatorIdentity = errors.New("pki: certificate carries no valid operator identity")

// operatorURIPathPrefix is the path of an operator URI SAN,
// spiffe://<trust domain>/operator/<name>.
const operatorURIPathPrefix = "/operator/"

// MaxOperatorNameLen bounds an operator name.
const MaxOperatorNameLen = 64

// DefaultOperatorLifetime is the lifetime of an operator certificate.
const DefaultOperatorLifetime = 30 * 24 * time.Hour

// OperatorURI returns the URI SAN of an operator certificate.
func OperatorURI(trustDomain, name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: operatorURIPathPrefix + name}
}

// ValidateOperatorName accepts 1..MaxOperatorNameLen characters of
// [a-z0-9._-].
func ValidateOperatorName(name string) error {
	if name == "" || len(name) > MaxOperatorNameLen {
		return fmt.Errorf("%w: operator name must be 1 to %d characters", ErrOperatorIdentity, MaxOperatorNameLen)
	}
	for _, c := range name {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: operator name %q: use lowercase letters, digits, '.', '-' or '_'", ErrOperatorIdentity, name)
		}
	}
	return nil
}

// IssueOperator issues an operator client certificate (ClientAuth only,
// URI SAN OperatorURI) with a fresh P-256 key, for enrollctl. 0 lifetime
// means DefaultOperatorLifetime.
func (ca *CA) IssueOperator(name string, lifetime time.Duration) (*tls.Certificate, error) {
	if err := ValidateOperatorName(name); err != nil {
		return nil, err
	}
	if lifetime == 0 {
		lifetime = DefaultOperatorLifetime
	}
	lifetime, err := leafLifetime(lifetime, DefaultOperatorLifetime)
	if err != nil {
		return nil, err
	}
	notBefore, notAfter, err := ca.validity(lifetime)
	if err != nil {
		return nil, err
	}
	key, err := newP256Key()
	if err != nil {
		return nil, err
	}
	tmpl := (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: "operator " + name},
		URIs:             x509util.MultiURL{OperatorURI(ca.trustDomain, name)},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage:      x509util.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraints: &x509util.BasicConstraints{IsCA: false},
		PublicKey:        key.Public(),
	}).GetCertificate()
	leaf, err := x509util.CreateCertificate(tmpl, ca.intermediate, key.Public(), ca.intermediateKey)
	if err != nil {
		return nil, fmt.Errorf("signing operator certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.intermediate.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// OperatorFromCertificate returns the operator name of a certificate whose
// chain the caller (crypto/tls) already verified against CA.RootPool: its
// only URI SAN must be OperatorURI(trustDomain, name). A device certificate
// is not an operator certificate.
func OperatorFromCertificate(cert *x509.Certificate, trustDomain string) (string, error) {
	if cert == nil || len(cert.URIs) != 1 {
		return "", fmt.Errorf("%w: want exactly one URI SAN spiffe://%s/operator/<name>", ErrOperatorIdentity, trustDomain)
	}
	u := cert.URIs[0]
	name, ok := strings.CutPrefix(u.Path, operatorURIPathPrefix)
	if !ok || u.String() != OperatorURI(trustDomain, name).String() {
		return "", fmt.Errorf("%w: URI SAN %.200q is not spiffe://%s/operator/<name>", ErrOperatorIdentity, u.String(), trustDomain)
	}
	if err := ValidateOperatorName(name); err != nil {
		return "", err
	}
	return name, nil
}
