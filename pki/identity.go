package pki

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// DeviceIDLen is the length of a device ID: the lowercase hex SHA-256 of the
// device's EK public key (PKIX DER).
const DeviceIDLen = 64

// maxTrustDomainLen is the SPIFFE limit on a trust domain name.
const maxTrustDomainLen = 255

// deviceURIPathPrefix is the path of a device URI before the device ID.
const deviceURIPathPrefix = "/device/"

// ValidateDeviceID reports whether id is DeviceIDLen lowercase hex characters.
// The error wraps ErrDeviceID.
func ValidateDeviceID(id string) error {
	if len(id) != DeviceIDLen {
		return fmt.Errorf("%w: has %d characters; want %d lowercase hex characters (sha-256 of the ek public key)", ErrDeviceID, len(id), DeviceIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("%w: character %d is %q; want lowercase hex", ErrDeviceID, i, c)
		}
	}
	return nil
}

// ValidateTrustDomain reports whether td is a SPIFFE trust domain name:
// 1 to 255 lowercase letters, digits, '.', '-' or '_'. The error wraps
// ErrTrustDomain.
func ValidateTrustDomain(td string) error {
	if td == "" || len(td) > maxTrustDomainLen {
		return fmt.Errorf("%w: has %d characters; want 1 to %d", ErrTrustDomain, len(td), maxTrustDomainLen)
	}
	for i := 0; i < len(td); i++ {
		if c := td[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: character %d of %q is %q; use lowercase letters, digits, '.', '-' or '_'", ErrTrustDomain, i, td, c)
		}
	}
	return nil
}

// DeviceURI returns the URI SAN of a device certificate,
// spiffe://<trustDomain>/device/<deviceID>. It does not validate its
// arguments; see ValidateTrustDomain and ValidateDeviceID.
func DeviceURI(trustDomain, deviceID string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: deviceURIPathPrefix + deviceID}
}

// DeviceIDFromCertificate returns the device ID of a device certificate: its
// only URI SAN must be DeviceURI(trustDomain, id), with a valid id equal to
// the subject common name.
//
// It does NOT verify the certificate's chain, validity period or key usage:
// call it only on a certificate already verified against CA.RootPool with
// x509.ExtKeyUsageClientAuth (crypto/tls does this for
// tls.RequireAndVerifyClientCert). Errors wrap ErrDeviceIdentity.
func DeviceIDFromCertificate(cert *x509.Certificate, trustDomain string) (string, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return "", fmt.Errorf("%w: %w", ErrDeviceIdentity, err)
	}
	if cert == nil {
		return "", fmt.Errorf("%w: certificate is nil", ErrDeviceIdentity)
	}
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("%w: certificate has %d URI SANs; want exactly one spiffe://%s/device/<id>", ErrDeviceIdentity, len(cert.URIs), trustDomain)
	}
	u := cert.URIs[0]
	id, ok := strings.CutPrefix(u.Path, deviceURIPathPrefix)
	// Comparing with the canonical form refuses another scheme or trust
	// domain, a port, user info, a query, a fragment and escaped paths.
	if !ok || u.String() != DeviceURI(trustDomain, id).String() {
		return "", fmt.Errorf("%w: URI SAN %.200q is not spiffe://%s/device/<id>", ErrDeviceIdentity, u.String(), trustDomain)
	}
	if err := ValidateDeviceID(id); err != nil {
		return "", fmt.Errorf("%w: URI SAN: %w", ErrDeviceIdentity, err)
	}
	if cn := cert.Subject.CommonName; cn != id {
		return "", fmt.Errorf("%w: common name %.80q does not match the URI SAN device id %s", ErrDeviceIdentity, cn, id)
	}
	return id, nil
}
