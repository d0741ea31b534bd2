package tpmsim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
)

// TCG object identifiers for EK certificates, from the TCG EK Credential
// Profile for TPM Family 2.0, section 3.2 (X.509 certificate fields), and the
// TCG OID registry (2.23.133).
var (
	// OIDTPMManufacturer is tcg-at-tpmManufacturer.
	OIDTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	// OIDTPMModel is tcg-at-tpmModel.
	OIDTPMModel = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	// OIDTPMVersion is tcg-at-tpmVersion.
	OIDTPMVersion = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	// OIDEKCertificate is tcg-kp-EKCertificate, the extended key usage of
	// an EK certificate.
	OIDEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}

	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// Default TPM attributes written into EK certificates. The manufacturer ID is
// Microsoft's TCG vendor ID ("MSFT"), which the reference simulator reports.
const (
	DefaultTPMManufacturer = "id:4D534654"
	DefaultTPMModel        = "MS TPM 2.0 reference simulator"
	DefaultTPMVersion      = "id:00000001"
)

// Manufacturer is a test TPM vendor CA that signs EK certificates the way a
// real vendor does. It is for tests and the demo only.
type Manufacturer struct {
	Certificate *x509.Certificate
	Key         crypto.Signer
}

// NewManufacturer creates a self-signed ECDSA P-256 manufacturer root CA.
func NewManufacturer(commonName string) (*Manufacturer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating manufacturer key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"edgeenroll test TPM manufacturer"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(30, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-signing manufacturer certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing manufacturer certificate: %w", err)
	}
	return &Manufacturer{Certificate: cert, Key: key}, nil
}

// File names LoadOrCreateManufacturer uses in its directory.
const (
	ManufacturerCertFile = "manufacturer_ca.crt"
	ManufacturerKeyFile  = "manufacturer_ca.key"
)

// LoadOrCreateManufacturer loads the manufacturer CA from dir
// (manufacturer_ca.crt, PEM certificate; manufacturer_ca.key, PEM PKCS#8
// key), or creates both when neither exists (the key with mode 0600). One
// file without the other is an error, never silently replaced. For the demo.
func LoadOrCreateManufacturer(dir string) (*Manufacturer, error) {
	certPath := filepath.Join(dir, ManufacturerCertFile)
	keyPath := filepath.Join(dir, ManufacturerKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		return parseManufacturer(certPEM, keyPEM)
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		// Create below.
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, fmt.Errorf("reading manufacturer certificate: %w", certErr)
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return nil, fmt.Errorf("reading manufacturer key: %w", keyErr)
	default:
		return nil, fmt.Errorf("manufacturer CA in %s is incomplete: need both %s and %s", dir, ManufacturerCertFile, ManufacturerKeyFile)
	}

	m, err := NewManufacturer("edgeenroll demo TPM manufacturer CA")
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(m.Key)
	if err != nil {
		return nil, fmt.Errorf("encoding manufacturer key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	// Key first: a crash in between leaves a key without a certificate,
	// which the next call reports instead of overwriting.
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("writing manufacturer key: %w", err)
	}
	if err := atomicfile.Write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.Certificate.Raw}), 0o644); err != nil {
		return nil, fmt.Errorf("writing manufacturer certificate: %w", err)
	}
	return m, nil
}

func parseManufacturer(certPEM, keyPEM []byte) (*Manufacturer, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, errors.New("manufacturer certificate: no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing manufacturer certificate: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, errors.New("manufacturer key: no PEM PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing manufacturer key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("manufacturer key: %T is not a signer", k)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("manufacturer key does not match its certificate")
	}
	return &Manufacturer{Certificate: cert, Key: signer}, nil
}

// EKCertificateOptions adjusts an issued EK certificate; tests use it to
// forge expired certificates or certificates with extra extensions. The zero
// value gives IssueEKCertificate's defaults.
type EKCertificateOptions struct {
	// NotBefore and NotAfter default to now-1h and now+20y.
	NotBefore, NotAfter time.Time
	// TPMManufacturer, TPMModel and TPMVersion go into the subjectAltName;
	// they default to the Default* constants.
	TPMManufacturer, TPMModel, TPMVersion string
	// ExtraExtensions are added after the TCG subjectAltName.
	ExtraExtensions []pkix.Extension
}

// IssueEKCertificate makes a realistic TCG EK certificate for ekPub (TCG EK
// Credential Profile 2.0, section 3.2): an empty subject; a critical
// subjectAltName holding a directoryName with the TPM manufacturer, model and
// version attributes; extended key usage tcg-kp-EKCertificate; key usage
// keyEncipherment (keyAgreement for an ECC EK, as the profile requires); the
// manufacturer as issuer; valid from now-1h to now+20y. It returns DER.
func (m *Manufacturer) IssueEKCertificate(ekPub crypto.PublicKey) ([]byte, error) {
	return m.IssueEKCertificateWithOptions(ekPub, nil)
}

// IssueEKCertificateWithOptions is IssueEKCertificate with overrides; nil
// opts means the defaults.
func (m *Manufacturer) IssueEKCertificateWithOptions(ekPub crypto.PublicKey, opts *EKCertificateOptions) ([]byte, error) {
	if opts == nil {
		opts = &EKCertificateOptions{}
	}
	now := time.Now()
	notBefore, notAfter := opts.NotBefore, opts.NotAfter
	if notBefore.IsZero() {
		notBefore = now.Add(-time.Hour)
	}
	if notAfter.IsZero() {
		notAfter = now.AddDate(20, 0, 0)
	}
	san, err := TCGSubjectAltName(
		withDefault(opts.TPMManufacturer, DefaultTPMManufacturer),
		withDefault(opts.TPMModel, DefaultTPMModel),
		withDefault(opts.TPMVersion, DefaultTPMVersion))
	if err != nil {
		return nil, err
	}
	var usage x509.KeyUsage
	switch ekPub.(type) {
	case *rsa.PublicKey:
		usage = x509.KeyUsageKeyEncipherment
	case *ecdsa.PublicKey:
		usage = x509.KeyUsageKeyAgreement
	default:
		return nil, fmt.Errorf("unsupported EK public key type %T", ekPub)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// Subject stays empty: the TCG profile puts the TPM's identity
		// in the subjectAltName instead.
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{OIDEKCertificate},
		BasicConstraintsValid: true,
		IsCA:                  false,
		ExtraExtensions:       append([]pkix.Extension{san}, opts.ExtraExtensions...),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.Certificate, ekPub, m.Key)
	if err != nil {
		return nil, fmt.Errorf("signing EK certificate: %w", err)
	}
	return der, nil
}

// TCGSubjectAltName builds the critical subjectAltName extension of a TCG EK
// certificate: GeneralNames holding one directoryName whose single,
// multi-valued RDN carries tcg-at-tpmManufacturer, tcg-at-tpmModel and
// tcg-at-tpmVersion as UTF8Strings (TCG EK Credential Profile 2.0, 3.2.9).
func TCGSubjectAltName(manufacturer, model, version string) (pkix.Extension, error) {
	utf8 := func(s string) asn1.RawValue {
		return asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagUTF8String, Bytes: []byte(s)}
	}
	name := pkix.RDNSequence{pkix.RelativeDistinguishedNameSET{
		{Type: OIDTPMManufacturer, Value: utf8(manufacturer)},
		{Type: OIDTPMModel, Value: utf8(model)},
		{Type: OIDTPMVersion, Value: utf8(version)},
	}}
	nameDER, err := asn1.Marshal(name)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encoding TPM attributes: %w", err)
	}
	// directoryName is GeneralName [4], explicitly tagged because Name is
	// a CHOICE (RFC 5280 4.2.1.6).
	dirName := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: nameDER}
	value, err := asn1.Marshal([]asn1.RawValue{dirName})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encoding subjectAltName: %w", err)
	}
	return pkix.Extension{Id: oidSubjectAltName, Critical: true, Value: value}, nil
}

func withDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}
