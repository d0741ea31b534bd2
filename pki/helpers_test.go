package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/pemutil"

	"github.com/edgeenroll/edgeenroll/pki"
)

// t0 is the fixed "now" of most tests: whole seconds, as X.509 encodes.
var t0 = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// newCA creates a throwaway CA in a fresh directory with its clock at now.
func newCA(tb testing.TB, now time.Time) (*pki.CA, string) {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "ca")
	ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(now)})
	if err != nil {
		tb.Fatalf("LoadOrCreateCA: %v", err)
	}
	return ca, dir
}

// deviceID derives a device ID the way the system does, from a seed
// standing in for the EK public key.
func deviceID(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(sum[:])
}

func newP256(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// readKey reads a key from a CA directory, for tests that forge bundles with
// the genuine keys.
func readKey(tb testing.TB, dir, name string) crypto.Signer {
	tb.Helper()
	v, err := pemutil.Read(filepath.Join(dir, name))
	if err != nil {
		tb.Fatal(err)
	}
	return v.(crypto.Signer)
}

func x5c(chain ...*x509.Certificate) []string {
	var out []string
	for _, c := range chain {
		out = append(out, base64.StdEncoding.EncodeToString(c.Raw))
	}
	return out
}

// signJWS signs payload as a compact JWS with go-jose, with any algorithm,
// typ and x5c chain: the tool for forging bundles.
func signJWS(tb testing.TB, key crypto.Signer, alg jose.SignatureAlgorithm, typ string, chain []*x509.Certificate, payload []byte) string {
	tb.Helper()
	opts := new(jose.SignerOptions).WithType(jose.ContentType(typ)).WithHeader("x5c", x5c(chain...))
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		tb.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		tb.Fatal(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// payloadJSON writes a bundle payload by hand, so tests can produce what
// SignBundle refuses to.
func payloadJSON(id string, version int, iat, exp time.Time, config string) []byte {
	return fmt.Appendf(nil, `{"device_id":%q,"version":%d,"iat":%q,"exp":%q,"config":%s}`,
		id, version, iat.Format(time.RFC3339), exp.Format(time.RFC3339), config)
}
