package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeenroll/edgeenroll/internal/atomicfile"

	"github.com/edgeenroll/edgeenroll/pki"
)

// BootstrapOperator is the name of the operator credential enrolld writes
// on first start.
const BootstrapOperator = "admin"

// renewOperatorBefore re-issues the bootstrap credential when it has less
// than this left.
const renewOperatorBefore = 7 * 24 * time.Hour

// AdminDir is where the bootstrap operator credential lives: ca.crt,
// operator.crt, operator.key (0600). enrollctl reads it with --admin-dir.
func AdminDir(dataDir string) string { return filepath.Join(dataDir, "admin") }

// ensureOperatorCredential writes the bootstrap operator credential if it
// is missing, about to expire, or not an admin credential. The key is written 0600 in a 0700 dir.
func ensureOperatorCredential(dir string, ca *pki.CA, now time.Time) (bool, error) {
	certPath, keyPath := filepath.Join(dir, "operator.crt"), filepath.Join(dir, "operator.key")
	if c, err := tls.LoadX509KeyPair(certPath, keyPath); err == nil && c.Leaf != nil && now.Add(renewOperatorBefore).Before(c.Leaf.NotAfter) {
		// A credential of the older form names no role: replace it.
		if op, err := pki.OperatorFromCertificate(c.Leaf, ca.TrustDomain()); err == nil && op.Role == pki.RoleAdmin {
			return false, nil
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("creating admin dir: %w", err)
	}
	cert, err := ca.IssueOperator(pki.RoleAdmin, BootstrapOperator, 0)
	if err != nil {
		return false, fmt.Errorf("issuing bootstrap operator certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return false, err
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{certPath, chain, 0o644},
		{filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root().Raw}), 0o644},
	} {
		if err := atomicfile.Write(f.path, f.data, f.mode); err != nil {
			return false, err
		}
	}
	return true, nil
}
