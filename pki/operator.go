package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.step.sm/crypto/x509util"

	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
)

// ErrOperatorIdentity: a certificate names no valid operator.
var ErrOperatorIdentity = errors.New("pki: certificate carries no valid operator identity")

// Role is what an operator certificate allows. The role is part of the
// certificate's URI SAN, so it is signed by the CA and cannot be changed by
// its holder.
type Role string

// Operator roles, from most to least powerful.
const (
	// RoleAdmin may do everything, including issuing operator
	// credentials.
	RoleAdmin Role = "admin"
	// RoleOperator approves, denies, revokes and re-admits devices and
	// manages groups and config bundles.
	RoleOperator Role = "operator"
	// RoleFactory imports and pre-registers device identities.
	RoleFactory Role = "factory"
	// RoleViewer reads.
	RoleViewer Role = "viewer"
)

// Roles lists every role.
func Roles() []Role { return []Role{RoleAdmin, RoleOperator, RoleFactory, RoleViewer} }

// ParseRole returns the role named s, or an error wrapping
// ErrOperatorIdentity that lists the valid roles.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles() {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("%w: role %.40q is not one of admin, operator, factory, viewer", ErrOperatorIdentity, s)
}

// operatorURIPathPrefix is the path of an operator URI SAN,
// spiffe://<trust domain>/operator/<role>/<name>.
const operatorURIPathPrefix = "/operator/"

// MaxOperatorNameLen bounds an operator name.
const MaxOperatorNameLen = 64

// DefaultOperatorLifetime is the lifetime of an operator certificate.
const DefaultOperatorLifetime = 30 * 24 * time.Hour

// Operator is the identity an operator certificate carries.
type Operator struct {
	Name string
	Role Role
}

func (o Operator) String() string { return string(o.Role) + "/" + o.Name }

// OperatorURI returns the URI SAN of an operator certificate,
// spiffe://<trustDomain>/operator/<role>/<name>.
func OperatorURI(trustDomain string, role Role, name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: operatorURIPathPrefix + string(role) + "/" + name}
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
func (ca *CA) IssueOperator(role Role, name string, lifetime time.Duration) (*tls.Certificate, error) {
	key, err := newP256Key()
	if err != nil {
		return nil, err
	}
	leaf, err := ca.IssueOperatorForKey(role, name, key.Public(), lifetime)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.intermediate.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// IssueOperatorForKey issues an operator certificate for a public key the
// operator generated (the private key never reaches the server). The caller
// decides that the requester may have role; pub must be ECDSA P-256/P-384
// or RSA of at least MinRSAKeyBits.
func (ca *CA) IssueOperatorForKey(role Role, name string, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	if _, err := ParseRole(string(role)); err != nil {
		return nil, err
	}
	if err := ValidateOperatorName(name); err != nil {
		return nil, err
	}
	if err := checkDevicePublicKey(pub); err != nil {
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
	tmpl := (&x509util.Certificate{
		Subject:          x509util.Subject{CommonName: "operator " + name, OrganizationalUnit: x509util.MultiString{string(role)}},
		URIs:             x509util.MultiURL{OperatorURI(ca.trustDomain, role, name)},
		NotBefore:        notBefore,
		NotAfter:         notAfter,
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage:      x509util.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraints: &x509util.BasicConstraints{IsCA: false},
		PublicKey:        pub,
	}).GetCertificate()
	leaf, err := x509util.CreateCertificate(tmpl, ca.intermediate, pub, ca.intermediateKey)
	if err != nil {
		return nil, fmt.Errorf("signing operator certificate: %w", err)
	}
	return leaf, nil
}

// OperatorFromCertificate returns the operator of a certificate whose chain
// the caller (crypto/tls) already verified against CA.RootPool: its only
// URI SAN must be OperatorURI(trustDomain, role, name) with a known role. A
// device certificate is not an operator certificate, and neither is a
// certificate of the older form spiffe://<td>/operator/<name>, which named
// no role (enrolld re-issues its bootstrap credential in the new form).
func OperatorFromCertificate(cert *x509.Certificate, trustDomain string) (Operator, error) {
	if cert == nil || len(cert.URIs) != 1 {
		return Operator{}, fmt.Errorf("%w: want exactly one URI SAN spiffe://%s/operator/<role>/<name>", ErrOperatorIdentity, trustDomain)
	}
	u := cert.URIs[0]
	rest, ok := strings.CutPrefix(u.Path, operatorURIPathPrefix)
	roleStr, name, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 || u.String() != OperatorURI(trustDomain, Role(roleStr), name).String() {
		return Operator{}, fmt.Errorf("%w: URI SAN %.200q is not spiffe://%s/operator/<role>/<name>", ErrOperatorIdentity, u.String(), trustDomain)
	}
	role, err := ParseRole(roleStr)
	if err != nil {
		return Operator{}, err
	}
	if err := ValidateOperatorName(name); err != nil {
		return Operator{}, err
	}
	return Operator{Name: name, Role: role}, nil
}

// WriteOperatorDir writes an operator credential as enrollctl's
// --admin-dir reads it: operator.key (PKCS#8, 0600), operator.crt (the
// chain, leaf first) and ca.crt (the root), each atomically, in dir
// (created 0700 if missing).
func WriteOperatorDir(dir string, chain [][]byte, key crypto.PrivateKey, rootDER []byte) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding the operator key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var chainPEM []byte
	for _, der := range chain {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"operator.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{"operator.crt", chainPEM, 0o644},
		{"ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}), 0o644},
	} {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}
