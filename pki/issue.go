package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"time"

	"go.step.sm/crypto/x509util"
)

// Issuer issues device certificates after attestation has decided. The
// embedded CA implements it, and so does package pki/stepca, which asks an
// operator's step-ca.
type Issuer interface {
	// IssueDevice issues a client certificate for req. It signs the key it
	// is given: the caller must have proven the key is the device's
	// TPM-resident, AK-certified key.
	IssueDevice(ctx context.Context, req DeviceCertRequest) (*Issued, error)
}

var _ Issuer = (*CA)(nil)

// DeviceCertRequest asks for a device certificate.
type DeviceCertRequest struct {
	// DeviceID is the device's ID: 64 lowercase hex characters, the SHA-256
	// of its EK public key.
	DeviceID string
	// PublicKey is the TPM-resident key: ECDSA P-256 or P-384, or RSA of
	// MinRSAKeyBits to MaxRSAKeyBits bits.
	PublicKey crypto.PublicKey
	// Lifetime of the certificate; 0 means DefaultLeafLifetime. It must be
	// within [MinLeafLifetime, MaxLeafLifetime].
	Lifetime time.Duration
	// CSR is the device's own PKCS#10 request, signed in the TPM by the
	// key PublicKey names, which the caller has verified (attest.VerifyCSR:
	// signature, and key == PublicKey). Optional: the embedded CA ignores
	// it and signs PublicKey; an issuer that forwards a request to another
	// CA (pki/stepca) needs it, because only the device can sign one.
	// Its subject and extensions are untrusted and never copied into a
	// certificate.
	CSR *x509.CertificateRequest
}

// Issued is an issued certificate and its chain.
type Issued struct {
	Leaf *x509.Certificate
	// Chain is the leaf, then the intermediate; the root is not included.
	Chain []*x509.Certificate
}

// IssueDevice issues a device client certificate: subject common name =
// device ID, one URI SAN DeviceURI(trust domain, device ID), KeyUsage
// DigitalSignature, ExtKeyUsage ClientAuth only, a random 128-bit serial,
// NotBefore = now - Backdate and NotAfter = now + lifetime, but never after
// the intermediate's NotAfter.
//
// It validates the request's form (ErrDeviceID, ErrPublicKey, ErrLifetime),
// not its authority: see Issuer. It fails with ErrCAExpired when the
// intermediate is not valid now or expires within MinLeafLifetime.
func (ca *CA) IssueDevice(ctx context.Context, req DeviceCertRequest) (*Issued, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := ValidateDeviceID(req.DeviceID); err != nil {
		return nil, err
	}
	if err := checkDevicePublicKey(req.PublicKey); err != nil {
		return nil, err
	}
	lifetime, err := leafLifetime(req.Lifetime, DefaultLeafLifetime)
	if err != nil {
		return nil, err
	}
	notBefore, notAfter, err := ca.validity(lifetime)
	if err != nil {
		return nil, err
	}
	leaf, err := x509util.CreateCertificate(deviceProfile(ca.trustDomain, req.DeviceID, req.PublicKey, notBefore, notAfter), ca.intermediate, req.PublicKey, ca.intermediateKey)
	if err != nil {
		return nil, fmt.Errorf("signing device certificate: %w", err)
	}
	return &Issued{Leaf: leaf, Chain: []*x509.Certificate{leaf, ca.intermediate}}, nil
}

// IssueServer issues a TLS server certificate (ExtKeyUsage ServerAuth only)
// for hosts (DNS names without wildcards, or IP addresses) with a fresh
// ECDSA P-256 key. The
// result's chain is the leaf, then the intermediate. A lifetime of 0 means
// DefaultServerLifetime; it must be within [MinLeafLifetime, MaxLeafLifetime]
// and the certificate never outlives the intermediate, so a long-running
// server must reissue before Leaf.NotAfter (tls.Config.GetCertificate).
func (ca *CA) IssueServer(hosts []string, lifetime time.Duration) (*tls.Certificate, error) {
	dnsNames, ips, err := splitHosts(hosts)
	if err != nil {
		return nil, err
	}
	lifetime, err = leafLifetime(lifetime, DefaultServerLifetime)
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
	leaf, err := x509util.CreateCertificate(serverProfile(dnsNames, ips, key.Public(), notBefore, notAfter), ca.intermediate, key.Public(), ca.intermediateKey)
	if err != nil {
		return nil, fmt.Errorf("signing server certificate: %w", err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{leaf.Raw, ca.intermediate.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// validity returns the validity period of a certificate of the given
// lifetime issued now, clamped to the intermediate's.
func (ca *CA) validity(lifetime time.Duration) (notBefore, notAfter time.Time, err error) {
	now := ca.now()
	inter := ca.intermediate
	if now.Before(inter.NotBefore) || !now.Before(inter.NotAfter.Add(-MinLeafLifetime)) {
		return time.Time{}, time.Time{}, fmt.Errorf("%w: intermediate is valid from %s to %s and now is %s; create a new CA or fix the clock",
			ErrCAExpired, inter.NotBefore.UTC().Format(time.RFC3339), inter.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return now.Add(-Backdate), minTime(now.Add(lifetime), inter.NotAfter), nil
}

// leafLifetime applies the default to 0 and checks the bounds.
func leafLifetime(lifetime, def time.Duration) (time.Duration, error) {
	if lifetime == 0 {
		return def, nil
	}
	if lifetime < MinLeafLifetime || lifetime > MaxLeafLifetime {
		return 0, fmt.Errorf("%w: %s is outside [%s, %s]; use 0 for the default %s", ErrLifetime, lifetime, MinLeafLifetime, MaxLeafLifetime, def)
	}
	return lifetime, nil
}

// ValidateDevicePublicKey reports whether pub is a key IssueDevice accepts:
// ECDSA P-256 or P-384 (a valid point), or RSA of MinRSAKeyBits to
// MaxRSAKeyBits bits. The error wraps ErrPublicKey. Other Issuer
// implementations apply it too.
func ValidateDevicePublicKey(pub crypto.PublicKey) error { return checkDevicePublicKey(pub) }

// ValidateLeafLifetime applies DefaultLeafLifetime to 0 and checks the
// bounds [MinLeafLifetime, MaxLeafLifetime] (ErrLifetime), as IssueDevice
// does.
func ValidateLeafLifetime(lifetime time.Duration) (time.Duration, error) {
	return leafLifetime(lifetime, DefaultLeafLifetime)
}

// checkDevicePublicKey accepts the keys a TPM 2.0 makes: ECDSA P-256 or
// P-384, RSA of MinRSAKeyBits to MaxRSAKeyBits bits.
func checkDevicePublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.X == nil || k.Y == nil {
			return fmt.Errorf("%w: ecdsa key is empty", ErrPublicKey)
		}
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ecdsa curve %s; use P-256 or P-384", ErrPublicKey, curveName(k.Curve))
		}
		if _, err := k.ECDH(); err != nil { // the point is on the curve
			return fmt.Errorf("%w: ecdsa key is not a valid point: %w", ErrPublicKey, err)
		}
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return fmt.Errorf("%w: rsa key is empty", ErrPublicKey)
		}
		if bits := k.N.BitLen(); bits < MinRSAKeyBits || bits > MaxRSAKeyBits {
			return fmt.Errorf("%w: rsa key has %d bits; use %d to %d", ErrPublicKey, bits, MinRSAKeyBits, MaxRSAKeyBits)
		}
		if k.E < 3 || k.E%2 == 0 {
			return fmt.Errorf("%w: rsa public exponent %d is invalid", ErrPublicKey, k.E)
		}
	default:
		return fmt.Errorf("%w: key type %T; use ecdsa P-256/P-384 or rsa >= %d bits", ErrPublicKey, pub, MinRSAKeyBits)
	}
	return nil
}

func curveName(c elliptic.Curve) string {
	if c == nil || c.Params() == nil {
		return "<nil>"
	}
	return c.Params().Name
}

// splitHosts sorts hosts into DNS names and IP addresses, refusing anything
// else.
func splitHosts(hosts []string) (dnsNames []string, ips []net.IP, err error) {
	if len(hosts) == 0 || len(hosts) > MaxServerHosts {
		return nil, nil, fmt.Errorf("%w: %d hosts; want 1 to %d DNS names or IP addresses", ErrHosts, len(hosts), MaxServerHosts)
	}
	for i, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		if !validDNSName(h) {
			return nil, nil, fmt.Errorf("%w: host %d %.80q is neither an IP address nor a DNS name", ErrHosts, i, h)
		}
		dnsNames = append(dnsNames, h)
	}
	return dnsNames, ips, nil
}

// validDNSName reports whether name is a plain DNS host name: dot-separated
// labels of 1 to 63 letters, digits or inner hyphens, 253 characters at most.
func validDNSName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if label == 0 || name[i-1] == '-' {
				return false
			}
			label = 0
			continue
		case c == '-':
			if label == 0 {
				return false
			}
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0 && name[len(name)-1] != '-'
}
