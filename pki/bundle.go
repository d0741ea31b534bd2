package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
)

// BundleJWSType is the "typ" header of a config bundle JWS. It keeps a JWS
// made for another purpose from being taken for a bundle (RFC 8725 §3.11).
const BundleJWSType = "edgeenroll-bundle+jws"

// bundleAlgorithm is the only JWS algorithm of a config bundle.
const bundleAlgorithm = jose.ES256

// Bundle is a device's configuration, signed by the CA's bundle signer.
type Bundle struct {
	DeviceID string `json:"device_id"`
	// Version increases with every new bundle of a device; it starts at 1.
	// The device refuses a version lower than the highest it has stored.
	Version   uint64    `json:"version"`
	IssuedAt  time.Time `json:"iat"`
	ExpiresAt time.Time `json:"exp"`
	// Config is the configuration; it must be a JSON object of at most
	// MaxBundleBytes (after compaction).
	Config json.RawMessage `json:"config"`
}

// bundleFields are the payload's JSON keys, exactly.
var bundleFields = []string{"device_id", "version", "iat", "exp", "config"}

// SignBundle signs b as a compact JWS (ES256) with the bundle-signing key,
// carrying the x5c chain (bundle signer, intermediate) and typ BundleJWSType
// in the protected header.
//
// b must pass the checks VerifyBundle applies to a payload: a valid device
// ID, Version >= 1, IssuedAt and ExpiresAt set with ExpiresAt after IssuedAt,
// and Config a JSON object within MaxBundleBytes. ExpiresAt must not be after
// the bundle signer's NotAfter (ErrLifetime): devices would reject the
// bundle from then on.
func (ca *CA) SignBundle(b Bundle) (string, error) {
	if len(b.Config) > MaxBundleBytes {
		return "", fmt.Errorf("%w: config has %d bytes; the limit is %d", ErrBundleTooLarge, len(b.Config), MaxBundleBytes)
	}
	b.IssuedAt, b.ExpiresAt = b.IssuedAt.UTC(), b.ExpiresAt.UTC()

	// Encode without HTML escaping so the config travels as given
	// (compacted), then run the device's own decoder and checks on the
	// result: whatever SignBundle signs, VerifyBundle can decode. The
	// fields beside the config are encoded the same way every time, so a
	// config that passed once (the last one is remembered) needs only
	// the checks of those fields.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(b); err != nil {
		return "", fmt.Errorf("%w: encoding: %w", ErrBundleMalformed, err)
	}
	payload := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if last := ca.lastBundleConfig.Load(); last != nil && bytes.Equal(*last, b.Config) {
		if err := checkBundleFields(&b); err != nil {
			return "", err
		}
	} else {
		if _, err := decodeBundlePayload(payload); err != nil {
			return "", err
		}
		config := bytes.Clone(b.Config)
		ca.lastBundleConfig.Store(&config)
	}

	now := ca.now()
	signer := ca.bundleSigner
	if now.Before(signer.NotBefore) || now.After(signer.NotAfter) {
		return "", fmt.Errorf("%w: bundle signer is valid from %s to %s and now is %s; create a new CA or fix the clock",
			ErrCAExpired, signer.NotBefore.UTC().Format(time.RFC3339), signer.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if b.ExpiresAt.After(signer.NotAfter) {
		return "", fmt.Errorf("%w: bundle exp %s is after the bundle signer expires (%s); shorten exp",
			ErrLifetime, b.ExpiresAt.Format(time.RFC3339), signer.NotAfter.UTC().Format(time.RFC3339))
	}

	// The compact JWS (RFC 7515 §7.1): the protected header, the same for
	// every bundle of this CA (see bundleJWSHeader), the payload, and the
	// ES256 signature of both (RFC 7518 §3.4).
	header, err := ca.bundleJWSHeader()
	if err != nil {
		return "", err
	}
	enc64 := base64.RawURLEncoding
	jws := make([]byte, 0, len(header)+1+enc64.EncodedLen(len(payload))+1+enc64.EncodedLen(2*p256ScalarBytes))
	jws = append(jws, header...)
	jws = append(jws, '.')
	jws = enc64.AppendEncode(jws, payload)
	digest := sha256.Sum256(jws)
	der, err := ca.bundleKey.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("signing bundle: %w", err)
	}
	sig, err := es256Signature(der)
	if err != nil {
		return "", fmt.Errorf("signing bundle: %w", err)
	}
	jws = append(jws, '.')
	jws = enc64.AppendEncode(jws, sig[:])
	compact := string(jws)
	if len(compact) > MaxBundleJWSBytes {
		return "", fmt.Errorf("%w: signed bundle has %d bytes; the limit is %d; shrink the config", ErrBundleTooLarge, len(compact), MaxBundleJWSBytes)
	}
	return compact, nil
}

// VerifyBundle is what a device runs on a config bundle. In order, it:
//
//  1. refuses a JWS over MaxBundleJWSBytes, or anything but the compact form;
//  2. decodes the protected header strictly: alg must be ES256 (none, HS*
//     and every other algorithm are refused), typ BundleJWSType, and x5c 1
//     to MaxBundleChainCerts certificates;
//  3. verifies the x5c chain to roots at now (VerifyWithClockSkew) for
//     ExtKeyUsage CodeSigning,
//     and requires the leaf to be an ECDSA P-256 non-CA certificate that
//     names CodeSigning explicitly;
//  4. verifies the signature with that leaf's key;
//  5. decodes the payload strictly (unknown or duplicate fields and trailing
//     data are errors) and checks it: Version >= 1, config a JSON object
//     within MaxBundleBytes;
//  6. checks now is within [IssuedAt - BundleClockSkew, ExpiresAt];
//  7. checks the bundle is for deviceID.
//
// It does NOT do rollback protection: the caller must refuse a Version lower
// than the highest it has stored. roots must be the enrollment root pool; a
// nil pool is an error, never the system roots.
func VerifyBundle(compact string, roots *x509.CertPool, deviceID string, now time.Time) (*Bundle, error) {
	if roots == nil {
		return nil, fmt.Errorf("%w: roots is nil; pass the enrollment root pool", ErrBundleChain)
	}
	if err := ValidateDeviceID(deviceID); err != nil {
		return nil, err
	}

	// 1. Size, then shape: exactly three base64url segments.
	if len(compact) > MaxBundleJWSBytes {
		return nil, fmt.Errorf("%w: %d bytes; the limit is %d", ErrBundleTooLarge, len(compact), MaxBundleJWSBytes)
	}
	if !isCompactJWS(compact) {
		return nil, fmt.Errorf("%w: not a compact JWS (three base64url segments)", ErrBundleMalformed)
	}

	// 2. Protected header, decoded by us strictly before go-jose sees it.
	if err := checkBundleHeader(compact[:strings.IndexByte(compact, '.')]); err != nil {
		return nil, err
	}
	jws, err := jose.ParseJWS(compact)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBundleMalformed, err)
	}
	if len(jws.Signatures) != 1 || jws.Signatures[0].Protected.Algorithm != bundleAlgorithm {
		return nil, fmt.Errorf("%w: want one %s signature", ErrBundleAlgorithm, bundleAlgorithm)
	}

	// 3. Certificate chain.
	chains, err := VerifyWithClockSkew(now, func(at time.Time) ([][]*x509.Certificate, error) {
		return jws.Signatures[0].Protected.Certificates(x509.VerifyOptions{
			Roots:       roots,
			CurrentTime: at,
			KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
		})
	})
	if err != nil {
		return nil, fmt.Errorf("%w: x5c: %w", ErrBundleChain, err)
	}
	leaf := chains[0][0]
	// crypto/x509 treats a certificate without extended key usages as valid
	// for any; a bundle signer must name CodeSigning.
	if !isBundleSigner(leaf) {
		return nil, fmt.Errorf("%w: x5c leaf %.80q is not an ECDSA P-256 code-signing leaf certificate", ErrBundleChain, leaf.Subject.CommonName)
	}

	// 4. Signature.
	payload, err := jws.Verify(leaf.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBundleSignature, err)
	}

	// 5. Payload.
	b, err := decodeBundlePayload(payload)
	if err != nil {
		return nil, err
	}

	// 6. Freshness.
	if now.Before(b.IssuedAt.Add(-BundleClockSkew)) {
		return nil, fmt.Errorf("%w: issued at %s, more than %s after now (%s); check the device clock",
			ErrBundleNotYetValid, b.IssuedAt.Format(time.RFC3339), BundleClockSkew, now.UTC().Format(time.RFC3339))
	}
	if now.After(b.ExpiresAt) {
		return nil, fmt.Errorf("%w: expired at %s, now is %s; fetch a new bundle from the server",
			ErrBundleExpired, b.ExpiresAt.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}

	// 7. Device binding.
	if b.DeviceID != deviceID {
		return nil, fmt.Errorf("%w: bundle is for %s, this device is %s", ErrBundleDevice, b.DeviceID, deviceID)
	}
	return b, nil
}

// isCompactJWS reports whether s is three base64url segments separated by
// dots. Empty segments pass here and fail the checks that follow.
func isCompactJWS(s string) bool {
	dots := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.':
			dots++
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return dots == 2
}

// checkBundleHeader decodes the protected header strictly and checks alg,
// typ and the x5c count.
func checkBundleHeader(segment string) error {
	raw, err := base64.RawURLEncoding.DecodeString(segment)
	if err != nil {
		return fmt.Errorf("%w: protected header: %w", ErrBundleMalformed, err)
	}
	var h struct {
		Alg string   `json:"alg"`
		Typ string   `json:"typ"`
		X5c []string `json:"x5c"`
	}
	if err := decodeStrict(raw, &h, "alg", "typ", "x5c"); err != nil {
		return fmt.Errorf("%w: protected header: %w", ErrBundleMalformed, err)
	}
	if h.Alg != bundleAlgorithm {
		return fmt.Errorf("%w: alg %.20q; bundles are signed with %s", ErrBundleAlgorithm, h.Alg, bundleAlgorithm)
	}
	if h.Typ != BundleJWSType {
		return fmt.Errorf("%w: typ %.40q; want %q", ErrBundleMalformed, h.Typ, BundleJWSType)
	}
	if len(h.X5c) == 0 || len(h.X5c) > MaxBundleChainCerts {
		return fmt.Errorf("%w: x5c has %d certificates; want 1 to %d", ErrBundleMalformed, len(h.X5c), MaxBundleChainCerts)
	}
	return nil
}

// checkBundleFields checks a bundle's fields but its config.
func checkBundleFields(b *Bundle) error {
	if err := ValidateDeviceID(b.DeviceID); err != nil {
		return fmt.Errorf("%w: device_id: %w", ErrBundleMalformed, err)
	}
	if b.Version < 1 {
		return fmt.Errorf("%w: version is %d; versions start at 1", ErrBundleVersion, b.Version)
	}
	if b.IssuedAt.IsZero() || b.ExpiresAt.IsZero() {
		return fmt.Errorf("%w: iat and exp are required", ErrBundleMalformed)
	}
	if !b.ExpiresAt.After(b.IssuedAt) {
		return fmt.Errorf("%w: exp %s is not after iat %s", ErrBundleMalformed, b.ExpiresAt.Format(time.RFC3339), b.IssuedAt.Format(time.RFC3339))
	}
	return nil
}

// p256ScalarBytes is the size of r and s in an ES256 signature.
const p256ScalarBytes = 32

// bundleJWSHeader returns the base64url protected header of this CA's
// bundles: alg ES256, typ BundleJWSType and the x5c chain (bundle signer,
// intermediate), exactly the fields checkBundleHeader accepts. It is
// computed once.
func (ca *CA) bundleJWSHeader() (string, error) {
	ca.bundleHeaderOnce.Do(func() {
		pub, ok := ca.bundleKey.Public().(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			ca.bundleHeaderErr = fmt.Errorf("signing bundle: the bundle signer key is a %T, not ECDSA P-256 (%s)", ca.bundleKey.Public(), bundleAlgorithm)
			return
		}
		h, err := json.Marshal(struct {
			Alg string   `json:"alg"`
			Typ string   `json:"typ"`
			X5c []string `json:"x5c"`
		}{bundleAlgorithm, BundleJWSType, []string{
			base64.StdEncoding.EncodeToString(ca.bundleSigner.Raw),
			base64.StdEncoding.EncodeToString(ca.intermediate.Raw),
		}})
		if err != nil {
			ca.bundleHeaderErr = fmt.Errorf("encoding bundle header: %w", err)
			return
		}
		ca.bundleHeader = base64.RawURLEncoding.EncodeToString(h)
	})
	return ca.bundleHeader, ca.bundleHeaderErr
}

// es256Signature turns an ASN.1 ECDSA P-256 signature, as a crypto.Signer
// returns it, into the JWS form: r and s, 32 bytes each, big-endian.
func es256Signature(der []byte) ([2 * p256ScalarBytes]byte, error) {
	var sig [2 * p256ScalarBytes]byte
	var rs struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &rs)
	if err != nil || len(rest) > 0 {
		return sig, fmt.Errorf("malformed ECDSA signature from the bundle signer key")
	}
	for _, v := range []*big.Int{rs.R, rs.S} {
		if v.Sign() <= 0 || v.BitLen() > 8*p256ScalarBytes {
			return sig, fmt.Errorf("ECDSA signature from the bundle signer key is not a P-256 one")
		}
	}
	rs.R.FillBytes(sig[:p256ScalarBytes])
	rs.S.FillBytes(sig[p256ScalarBytes:])
	return sig, nil
}

// decodeBundlePayload decodes and checks a bundle payload; SignBundle runs
// it on what it is about to sign, VerifyBundle on what it has verified.
func decodeBundlePayload(payload []byte) (*Bundle, error) {
	var b Bundle
	if err := decodeStrict(payload, &b, bundleFields...); err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrBundleMalformed, err)
	}
	if err := checkBundleFields(&b); err != nil {
		return nil, err
	}
	if len(b.Config) > MaxBundleBytes {
		return nil, fmt.Errorf("%w: config has %d bytes; the limit is %d", ErrBundleTooLarge, len(b.Config), MaxBundleBytes)
	}
	if len(b.Config) == 0 || b.Config[0] != '{' {
		return nil, fmt.Errorf("%w: config must be a JSON object", ErrBundleMalformed)
	}
	return &b, nil
}

// VerifyWithClockSkew runs verify at now and, if it failed only because the
// certificate verified starts after now by at most BundleClockSkew (a
// device clock behind the server's, meeting a certificate the server has
// just made), once more at that certificate's start.
func VerifyWithClockSkew[T any](now time.Time, verify func(at time.Time) (T, error)) (T, error) {
	v, err := verify(now)
	var invalid x509.CertificateInvalidError
	if err != nil && errors.As(err, &invalid) && invalid.Reason == x509.Expired && invalid.Cert != nil &&
		invalid.Cert.NotBefore.After(now) && invalid.Cert.NotBefore.Sub(now) <= BundleClockSkew {
		return verify(invalid.Cert.NotBefore)
	}
	return v, err
}
