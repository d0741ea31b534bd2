package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/edgeenroll/edgeenroll/pki"
)

// InitCA creates enrolld's CA in dataDir/ca, or loads the one there, and
// returns the root certificate's path and SHA-256 fingerprint (hex, of the
// DER). Several enrolld sharing a store must sign with one CA: create it
// once with InitCA and copy dataDir/ca to every server (or keep the keys in
// a KMS they all reach).
func InitCA(dataDir, trustDomain string, keys IssuerConfig) (rootPath, fingerprint string, err error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", "", fmt.Errorf("creating data dir: %w", err)
	}
	opts := pki.DefaultOptions()
	if trustDomain != "" {
		opts.TrustDomain = trustDomain
	}
	ca, err := pki.LoadOrCreateCA(caDir(dataDir), keys.caOptions(opts))
	if err != nil {
		return "", "", err
	}
	sum := sha256.Sum256(ca.Root().Raw)
	return RootCertPath(dataDir), hex.EncodeToString(sum[:]), nil
}
