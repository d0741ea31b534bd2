package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Object identifiers of the TCG EK Credential Profile for TPM Family 2.0
// (section 3.2) and RFC 5280.
var (
	oidSubjectAltName     = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidExtendedKeyUsage   = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidTCGEKCertificate   = asn1.ObjectIdentifier{2, 23, 133, 8, 1} // tcg-kp-EKCertificate
	oidTCGTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1} // tcg-at-tpmManufacturer
	oidTCGTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2} // tcg-at-tpmModel
	oidTCGTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3} // tcg-at-tpmVersion
	oidTCGAttributes      = asn1.ObjectIdentifier{2, 23, 133, 2}    // tcg-attribute arc
)

// maxTPMAttributeLen bounds each TPM attribute string in the subjectAltName.
const maxTPMAttributeLen = 256

// ParseEKPublic parses a PKIX (SubjectPublicKeyInfo) DER EK public key and
// checks it is an acceptable EK: RSA of MinRSABits..MaxRSABits or ECDSA
// P-256/P-384. Undecodable input is ReasonMalformed, any other key type or
// size ReasonEKWeak. It says nothing about whether the key is a real EK: that
// takes VerifyEKCertificate (or a pre-registration) and credential activation.
func ParseEKPublic(pkixDER []byte) (crypto.PublicKey, error) {
	// Step 1: bounds.
	if len(pkixDER) == 0 || len(pkixDER) > MaxPublicKeySize {
		return nil, reject(ReasonMalformed, "EK public key of %d bytes, want 1..%d", len(pkixDER), MaxPublicKeySize)
	}
	// Step 2: decode (crypto/x509 refuses trailing data).
	pub, err := x509.ParsePKIXPublicKey(pkixDER)
	if err != nil {
		return nil, rejectErr(ReasonMalformed, err, "parsing EK public key")
	}
	// Step 3: policy on key type and size.
	if err := checkEKKey(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// checkEKKey refuses EK keys of unacceptable type or size (ReasonEKWeak).
func checkEKKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N == nil {
			return reject(ReasonEKWeak, "RSA EK has no modulus")
		}
		if bits := k.N.BitLen(); bits < MinRSABits || bits > MaxRSABits {
			return reject(ReasonEKWeak, "RSA EK of %d bits, want %d..%d", bits, MinRSABits, MaxRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return reject(ReasonEKWeak, "ECC EK curve not accepted, want P-256 or P-384")
		}
		return nil
	case nil:
		return reject(ReasonEKWeak, "no EK public key")
	default:
		return reject(ReasonEKWeak, "EK key type %T not accepted", pub)
	}
}

// DeviceID derives the device identity from its EK: the lowercase hex
// SHA-256 of the EK public key's PKIX DER encoding. It is stable across
// re-enrollments and agent resets. It does not check the key.
func DeviceID(ekPub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(ekPub)
	if err != nil {
		return "", fmt.Errorf("encoding EK public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// EKCertificateInfo is a verified EK certificate and the TPM attributes from
// its subjectAltName. The attribute strings are as the manufacturer signed
// them (for example "id:49465800"), not interpreted.
type EKCertificateInfo struct {
	Certificate  *x509.Certificate
	Manufacturer string
	Model        string
	Version      string
	// ValidFrom and ValidUntil bound, inclusively, the times at which the
	// chain that verified is valid: the verdict is the same at any time
	// between them (the certificate bytes and the pools being the same),
	// which is what lets a caller remember it.
	ValidFrom, ValidUntil time.Time
}

// VerifyEKCertificate verifies an EK certificate for ekPub against the TPM
// manufacturer roots at time now:
//
//  1. certDER is exactly one DER certificate of at most MaxEKCertificateSize
//     bytes (send EK.Certificate.Raw, not raw NV contents with a TCG header
//     or padding) — else ReasonMalformed; ekPub is an acceptable EK key —
//     else ReasonEKWeak.
//  2. The TCG subjectAltName (2.5.29.17), which crypto/x509 cannot handle
//     because it holds only a directoryName, must be present and decode as
//     exactly one directoryName carrying tcg-at-tpmManufacturer, -tpmModel
//     and -tpmVersion; any other unhandled critical extension is refused. If
//     an extended key usage extension is present it must include
//     tcg-kp-EKCertificate (2.23.133.8.1). The certificate must not be a CA.
//  3. The chain to roots (via the optional intermediates) verifies at now,
//     with any extended key usage along the chain.
//  4. The certificate's public key equals ekPub (else ReasonEKMismatch).
//
// Failures in steps 2 and 3 are ReasonEKUntrusted. roots must be non-empty:
// a nil pool would mean the system roots to crypto/x509, so it is refused.
// It does NOT check revocation, nor that the TPM holding the EK is the one
// speaking: credential activation proves that.
func VerifyEKCertificate(certDER []byte, ekPub crypto.PublicKey, roots, intermediates *x509.CertPool, now time.Time) (*EKCertificateInfo, error) {
	if roots == nil {
		return nil, errors.New("attest: VerifyEKCertificate needs manufacturer roots")
	}
	if now.IsZero() {
		return nil, errors.New("attest: VerifyEKCertificate needs the current time")
	}

	// Step 1: bounds and decode.
	if len(certDER) == 0 || len(certDER) > MaxEKCertificateSize {
		return nil, reject(ReasonMalformed, "EK certificate of %d bytes, want 1..%d", len(certDER), MaxEKCertificateSize)
	}
	if err := checkEKKey(ekPub); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, rejectErr(ReasonMalformed, err, "parsing EK certificate")
	}

	// Step 2: static validation of the TCG profile.
	info := &EKCertificateInfo{Certificate: cert}
	var sanSeen bool
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		if sanSeen {
			return nil, reject(ReasonEKUntrusted, "EK certificate has two subjectAltName extensions")
		}
		sanSeen = true
		if info.Manufacturer, info.Model, info.Version, err = parseTCGSubjectAltName(ext.Value); err != nil {
			return nil, rejectErr(ReasonEKUntrusted, err, "EK certificate subjectAltName")
		}
	}
	if !sanSeen {
		return nil, reject(ReasonEKUntrusted, "EK certificate has no TCG subjectAltName")
	}
	// The subjectAltName is now handled; anything else critical that
	// crypto/x509 did not handle is refused.
	for _, oid := range cert.UnhandledCriticalExtensions {
		if !oid.Equal(oidSubjectAltName) {
			return nil, reject(ReasonEKUntrusted, "EK certificate has unhandled critical extension %v", oid)
		}
	}
	cert.UnhandledCriticalExtensions = nil
	if err := checkEKUsage(cert); err != nil {
		return nil, err
	}

	// Step 3: chain to a manufacturer root at now.
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	chains, err := cert.Verify(opts)
	if err != nil {
		return nil, rejectErr(ReasonEKUntrusted, err, "verifying EK certificate chain")
	}
	info.ValidFrom, info.ValidUntil = validity(chains)

	// Step 4: the certified key is the EK presented.
	if !publicKeysEqual(ekPub, cert.PublicKey) {
		return nil, reject(ReasonEKMismatch, "EK certificate is for a different public key than the EK sent")
	}
	return info, nil
}

// validity is the window of one of the chains that verified: the latest
// NotBefore and the earliest NotAfter along it. Of several chains it takes
// the one that stays valid latest. Every chain verified at the time given,
// so each one's window holds that time.
func validity(chains [][]*x509.Certificate) (from, until time.Time) {
	for _, chain := range chains {
		var f, u time.Time
		for i, c := range chain {
			if i == 0 || c.NotBefore.After(f) {
				f = c.NotBefore
			}
			if i == 0 || c.NotAfter.Before(u) {
				u = c.NotAfter
			}
		}
		if len(chain) > 0 && (until.IsZero() || u.After(until)) {
			from, until = f, u
		}
	}
	return from, until
}

// checkEKUsage applies the TCG profile's key usage rules (ReasonEKUntrusted).
func checkEKUsage(cert *x509.Certificate) error {
	if cert.IsCA {
		return reject(ReasonEKUntrusted, "EK certificate is a CA certificate")
	}
	hasEKU := false
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidExtendedKeyUsage) {
			hasEKU = true
		}
	}
	if !hasEKU {
		return nil
	}
	for _, oid := range cert.UnknownExtKeyUsage {
		if oid.Equal(oidTCGEKCertificate) {
			return nil
		}
	}
	return reject(ReasonEKUntrusted, "EK certificate extended key usage lacks tcg-kp-EKCertificate (%v)", oidTCGEKCertificate)
}

// parseTCGSubjectAltName decodes the subjectAltName of a TCG EK certificate
// (TCG EK Credential Profile 2.0, 3.2.9): GeneralNames holding exactly one
// directoryName ([4] EXPLICIT Name) carrying tcg-at-tpmManufacturer,
// tcg-at-tpmModel and tcg-at-tpmVersion, each exactly once, as strings.
// Vendors put them in one multi-valued RDN or in three RDNs; both are
// accepted. Other TCG attributes (2.23.133.2.*, such as tcg-at-tpmIdLabel)
// are tolerated and ignored; an attribute outside the TCG arc is refused.
func parseTCGSubjectAltName(der []byte) (manufacturer, model, version string, err error) {
	var names []asn1.RawValue
	rest, err := asn1.Unmarshal(der, &names)
	if err != nil {
		return "", "", "", fmt.Errorf("decoding GeneralNames: %w", err)
	}
	if len(rest) != 0 {
		return "", "", "", errors.New("trailing data after GeneralNames")
	}
	if len(names) != 1 {
		return "", "", "", fmt.Errorf("%d general names, want exactly one directoryName", len(names))
	}
	dn := names[0]
	if dn.Class != asn1.ClassContextSpecific || dn.Tag != 4 || !dn.IsCompound {
		return "", "", "", fmt.Errorf("general name [%d] class %d is not a directoryName", dn.Tag, dn.Class)
	}
	var rdns pkix.RDNSequence
	rest, err = asn1.Unmarshal(dn.Bytes, &rdns)
	if err != nil {
		return "", "", "", fmt.Errorf("decoding directoryName: %w", err)
	}
	if len(rest) != 0 {
		return "", "", "", errors.New("trailing data after directoryName")
	}
	for _, rdn := range rdns {
		for _, atv := range rdn {
			s, ok := atv.Value.(string)
			if !ok {
				return "", "", "", fmt.Errorf("attribute %v is not a string", atv.Type)
			}
			if len(s) == 0 || len(s) > maxTPMAttributeLen || !utf8.ValidString(s) {
				return "", "", "", fmt.Errorf("attribute %v has an invalid value", atv.Type)
			}
			var dst *string
			switch {
			case atv.Type.Equal(oidTCGTPMManufacturer):
				dst = &manufacturer
			case atv.Type.Equal(oidTCGTPMModel):
				dst = &model
			case atv.Type.Equal(oidTCGTPMVersion):
				dst = &version
			case isTCGAttribute(atv.Type):
				continue // optional TCG attribute, not used
			default:
				return "", "", "", fmt.Errorf("unexpected attribute %v in directoryName", atv.Type)
			}
			if *dst != "" {
				return "", "", "", fmt.Errorf("attribute %v appears twice", atv.Type)
			}
			*dst = s
		}
	}
	if manufacturer == "" || model == "" || version == "" {
		return "", "", "", errors.New("directoryName lacks TPM manufacturer, model or version")
	}
	return manufacturer, model, version, nil
}

// isTCGAttribute reports whether oid is under the TCG attribute arc.
func isTCGAttribute(oid asn1.ObjectIdentifier) bool {
	return len(oid) == len(oidTCGAttributes)+1 && oid[:len(oidTCGAttributes)].Equal(oidTCGAttributes)
}
