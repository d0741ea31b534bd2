package pki

import (
	"crypto"
	"crypto/x509"
	"net"
	"time"

	"go.step.sm/crypto/x509util"
)

// The certificate profiles pki issues, as x509util templates. Serial numbers
// (128 random bits) and subject key IDs are filled in by
// x509util.CreateCertificate; authority key IDs by crypto/x509.

func rootProfile(trustDomain string, pub crypto.PublicKey, notBefore, notAfter time.Time) *x509.Certificate {
	return (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: trustDomain + " Root CA", Organization: x509util.MultiString{"edgeenroll"}},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 1},
		PublicKey:        pub,
	}).GetCertificate()
}

func intermediateProfile(trustDomain string, pub crypto.PublicKey, notBefore, notAfter time.Time) *x509.Certificate {
	return (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: trustDomain + " Intermediate CA", Organization: x509util.MultiString{"edgeenroll"}},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 0},
		PublicKey:        pub,
	}).GetCertificate()
}

// bundleSignerProfile may sign config bundles and nothing else: CodeSigning
// is its only extended key usage, and VerifyBundle requires it.
func bundleSignerProfile(trustDomain string, pub crypto.PublicKey, notBefore, notAfter time.Time) *x509.Certificate {
	return (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: trustDomain + " Config Bundle Signer", Organization: x509util.MultiString{"edgeenroll"}},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage:      x509util.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		BasicConstraints: &x509util.BasicConstraints{IsCA: false},
		PublicKey:        pub,
	}).GetCertificate()
}

// deviceProfile is a TLS client certificate naming the device by common name
// and SPIFFE URI. ClientAuth only: it can neither serve TLS nor sign bundles.
func deviceProfile(trustDomain, deviceID string, pub crypto.PublicKey, notBefore, notAfter time.Time) *x509.Certificate {
	return (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: deviceID},
		URIs:             x509util.MultiURL{DeviceURI(trustDomain, deviceID)},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage:      x509util.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraints: &x509util.BasicConstraints{IsCA: false},
		PublicKey:        pub,
	}).GetCertificate()
}

// serverProfile is a TLS server certificate (ServerAuth only).
func serverProfile(dnsNames []string, ips []net.IP, pub crypto.PublicKey, notBefore, notAfter time.Time) *x509.Certificate {
	cn := ""
	if len(dnsNames) > 0 {
		cn = dnsNames[0]
	} else if len(ips) > 0 {
		cn = ips[0].String()
	}
	return (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: cn},
		DNSNames:         dnsNames,
		IPAddresses:      ips,
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage:      x509util.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraints: &x509util.BasicConstraints{IsCA: false},
		PublicKey:        pub,
	}).GetCertificate()
}
