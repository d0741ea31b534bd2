package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.step.sm/crypto/x509util"
)

// ErrServiceName: a service name is malformed.
var ErrServiceName = errors.New("pki: invalid service name")

// ServiceURI is the URI SAN of a service client certificate,
// spiffe://<trust domain>/service/<name>.
func ServiceURI(trustDomain, name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/service/" + name}
}

// IssueServiceClient issues a TLS client certificate (ClientAuth only) for
// one of our own services, such as enrolld's connection to an external MQTT
// broker: common name = name (what a broker takes as the user name), URI
// SAN ServiceURI, a fresh P-256 key. Its name can never be a device ID or
// an operator: the DeviceIDFromCertificate and OperatorFromCertificate
// parsers refuse its URI.
func (ca *CA) IssueServiceClient(name string, lifetime time.Duration) (*tls.Certificate, error) {
	if err := ValidateOperatorName(name); err != nil { // same alphabet
		return nil, fmt.Errorf("%w: %v", ErrServiceName, err)
	}
	if len(name) == DeviceIDLen {
		return nil, fmt.Errorf("%w: a %d-character name could pass for a device ID", ErrServiceName, DeviceIDLen)
	}
	lifetime, err := leafLifetime(lifetime, DefaultServerLifetime)
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
		Subject:          x509util.Subject{CommonName: name},
		URIs:             x509util.MultiURL{ServiceURI(ca.trustDomain, name)},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage:      x509util.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraints: &x509util.BasicConstraints{IsCA: false},
		PublicKey:        key.Public(),
	}).GetCertificate()
	leaf, err := x509util.CreateCertificate(tmpl, ca.intermediate, key.Public(), ca.intermediateKey)
	if err != nil {
		return nil, fmt.Errorf("signing service certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.intermediate.Raw}, PrivateKey: key, Leaf: leaf}, nil
}
