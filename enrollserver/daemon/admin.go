package daemon

import (
	"crypto/tls"
	"fmt"
	"path/filepath"
	"time"

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
	cert, err := ca.IssueOperator(pki.RoleAdmin, BootstrapOperator, 0)
	if err != nil {
		return false, fmt.Errorf("issuing bootstrap operator certificate: %w", err)
	}
	if err := pki.WriteOperatorDir(dir, cert.Certificate, cert.PrivateKey, ca.Root().Raw); err != nil {
		return false, fmt.Errorf("writing the admin credential: %w", err)
	}
	return true, nil
}
