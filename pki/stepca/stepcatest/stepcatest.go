// Package stepcatest runs a real step-ca for tests: the CA server of
// github.com/smallstep/certificates, in process, on a loopback port, with
// its own throwaway root, intermediate and one JWK provisioner whose
// private key is written to a file encrypted with a password, the way
// `step ca init` leaves it.
//
// It is test tooling only and links all of step-ca: never import it from
// production code (pki/stepca itself speaks step-ca's HTTP API and does
// not import smallstep/certificates).
//
// step-ca logs through the standard library's global logger; its lines
// appear in verbose test output.
package stepcatest

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	stepca "github.com/smallstep/certificates/ca"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"
)

// ProvisionerName is the name of the JWK provisioner Start configures.
const ProvisionerName = "edgeenroll"

// startTimeout bounds how long Start waits for the CA to answer /health.
const startTimeout = 10 * time.Second

// Options configure the test CA. A nil *Options means the zero value:
// step-ca's defaults (leaves of 5 minutes to 24 hours, the default x509
// template with serverAuth and clientAuth).
type Options struct {
	// MinTLSCertDuration, MaxTLSCertDuration and DefaultTLSCertDuration
	// become the provisioner's claims when set.
	MinTLSCertDuration, MaxTLSCertDuration, DefaultTLSCertDuration time.Duration
	// Template, if set, is the provisioner's x509 template (JSON, with
	// step's template functions).
	Template string
	// Templates add one JWK provisioner per entry, named by the key, with
	// that x509 template and its own key (CA.Keys), so one CA serves
	// tests of several templates.
	Templates map[string]string
	// DNSNames of the CA (its TLS certificate and token audiences);
	// default 127.0.0.1 and localhost.
	DNSNames []string
}

// CA is a running step-ca.
type CA struct {
	// URL is https://127.0.0.1:<port>.
	URL string
	// Dir holds the CA's files.
	Dir string
	// RootFile is the root certificate (PEM): what clients and devices
	// must trust.
	RootFile string
	Root     *x509.Certificate
	// Intermediate signs the leaves.
	Intermediate *x509.Certificate
	// Provisioner is the JWK provisioner's name.
	Provisioner string
	// Key is the provisioner's private key; KeyFile holds it encrypted
	// (JWE) with the password in PasswordFile.
	Key          *jose.JSONWebKey
	KeyFile      string
	PasswordFile string
	// Keys are the private keys of the provisioners of Options.Templates.
	Keys map[string]*jose.JSONWebKey

	interKey crypto.Signer
	srv      *stepca.CA
	done     chan error
}

// Start starts a step-ca on a free loopback port and stops it when the
// test ends. It fails the test if the CA does not answer within
// startTimeout.
func Start(tb testing.TB, opts *Options) *CA {
	tb.Helper()
	if opts == nil {
		opts = &Options{}
	}
	c := &CA{Dir: tb.TempDir(), Provisioner: ProvisionerName}
	rootKey, interKey := newKey(tb), newKey(tb)
	now := time.Now()
	c.Root = mustCert(tb, &x509util.Certificate{
		Subject:          x509util.Subject{CommonName: "stepcatest Root CA"},
		NotBefore:        now.Add(-time.Minute),
		NotAfter:         now.Add(24 * time.Hour),
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 1},
		PublicKey:        rootKey.Public(),
	}, nil, rootKey)
	c.Intermediate = mustCert(tb, &x509util.Certificate{
		Subject:          x509util.Subject{CommonName: "stepcatest Intermediate CA"},
		NotBefore:        now.Add(-time.Minute),
		NotAfter:         now.Add(24 * time.Hour),
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 0},
		PublicKey:        interKey.Public(),
	}, c.Root, rootKey)
	c.interKey = interKey
	c.RootFile = filepath.Join(c.Dir, "root_ca.crt")
	interFile := filepath.Join(c.Dir, "intermediate_ca.crt")
	interKeyFile := filepath.Join(c.Dir, "intermediate_ca.key")
	writePEM(tb, c.RootFile, c.Root, 0o644)
	writePEM(tb, interFile, c.Intermediate, 0o644)
	writePEM(tb, interKeyFile, interKey, 0o600)

	prov, key := NewJWKProvisioner(tb, ProvisionerName)
	c.Key = key
	password := []byte("stepcatest provisioner password")
	c.KeyFile = filepath.Join(c.Dir, "provisioner.jwk.json")
	c.PasswordFile = filepath.Join(c.Dir, "provisioner.password")
	WriteEncryptedKey(tb, c.KeyFile, key, password)
	if err := os.WriteFile(c.PasswordFile, append(password, '\n'), 0o600); err != nil {
		tb.Fatal(err)
	}
	claims := &provisioner.Claims{}
	for _, d := range []struct {
		v   time.Duration
		dst **provisioner.Duration
	}{{opts.MinTLSCertDuration, &claims.MinTLSDur}, {opts.MaxTLSCertDuration, &claims.MaxTLSDur}, {opts.DefaultTLSCertDuration, &claims.DefaultTLSDur}} {
		if d.v != 0 {
			*d.dst = &provisioner.Duration{Duration: d.v}
		}
	}
	prov.Claims = claims
	if opts.Template != "" {
		prov.Options = &provisioner.Options{X509: &provisioner.X509Options{Template: opts.Template}}
	}
	provs := provisioner.List{prov}
	c.Keys = map[string]*jose.JSONWebKey{}
	for name, tmpl := range opts.Templates {
		p, k := NewJWKProvisioner(tb, name)
		p.Options = &provisioner.Options{X509: &provisioner.X509Options{Template: tmpl}}
		provs = append(provs, p)
		c.Keys[name] = k
	}

	dnsNames := opts.DNSNames
	if len(dnsNames) == 0 {
		dnsNames = []string{"127.0.0.1", "localhost"}
	}
	// step-ca listens with ListenAndServe, so it cannot take a listener:
	// find a free port, then let it bind that port. Another process may
	// take the port in between; retry then.
	var lastErr error
	for range 3 {
		addr := freeLoopbackAddr(tb)
		cfg := &config.Config{
			Root:             []string{c.RootFile},
			IntermediateCert: interFile,
			IntermediateKey:  interKeyFile,
			Address:          addr,
			DNSNames:         dnsNames,
			AuthorityConfig: &config.AuthConfig{
				Provisioners: provs,
			},
		}
		srv, err := stepca.New(cfg, stepca.WithQuiet(true))
		if err != nil {
			tb.Fatalf("stepcatest: creating step-ca: %v", err)
		}
		c.srv, c.done = srv, make(chan error, 1)
		go func() { c.done <- srv.Run() }()
		c.URL = "https://" + addr
		if lastErr = c.waitHealthy(startTimeout); lastErr == nil {
			tb.Cleanup(c.Stop)
			return c
		}
		c.Stop()
	}
	tb.Fatalf("stepcatest: step-ca did not start: %v", lastErr)
	return nil
}

// Stop stops the CA; its port then refuses connections. Stopping twice is
// harmless.
func (c *CA) Stop() {
	if c.srv == nil {
		return
	}
	_ = c.srv.Stop()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
	c.srv = nil
}

// IssueLeaf signs tmpl for pub with the CA's intermediate key, bypassing
// step-ca's provisioners: a certificate the CA issued to someone else, for
// tests of what a relying party accepts. It returns the leaf and the
// intermediate.
func (c *CA) IssueLeaf(tb testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) []*x509.Certificate {
	tb.Helper()
	leaf, err := x509util.CreateCertificate(tmpl, c.Intermediate, pub, c.interKey)
	if err != nil {
		tb.Fatal(err)
	}
	return []*x509.Certificate{leaf, c.Intermediate}
}

// RootPool is a pool holding the CA's root.
func (c *CA) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Root)
	return p
}

// RootPEM is the root certificate in PEM.
func (c *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Root.Raw})
}

// waitHealthy polls /health until it answers 200, Run fails, or timeout.
func (c *CA) waitHealthy(timeout time.Duration) error {
	client := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.RootPool(), MinVersion: tls.VersionTLS12}},
	}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/health", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/health answered %s", resp.Status)
		}
		select {
		case runErr := <-c.done:
			c.done <- runErr
			return fmt.Errorf("step-ca stopped: %w", runErr)
		case <-ctx.Done():
			return fmt.Errorf("no answer from %s within %s: %w", c.URL, timeout, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// NewJWKProvisioner makes a JWK provisioner named name with a fresh P-256
// key (ES256), as `step ca provisioner add --type JWK --create` does, and
// returns it with its private key.
func NewJWKProvisioner(tb testing.TB, name string) (*provisioner.JWK, *jose.JSONWebKey) {
	tb.Helper()
	key, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		tb.Fatal(err)
	}
	if key.KeyID, err = jose.Thumbprint(key); err != nil {
		tb.Fatal(err)
	}
	pub := key.Public()
	return &provisioner.JWK{Type: "JWK", Name: name, Key: &pub}, key
}

// testPBKDF2Iterations is the PBES2 iteration count of test key files. step
// uses jose.PBKDF2Iterations (600,000), which costs a second per key under
// the race detector; the format is the same.
const testPBKDF2Iterations = 1000

// WriteEncryptedKey writes key to path as a JWE encrypted with password
// (PBES2-HS256+A128KW, A256GCM), the format of `step crypto jwk create` and
// of step-ca's provisioner keys, with few PBKDF2 iterations.
func WriteEncryptedKey(tb testing.TB, path string, key *jose.JSONWebKey, password []byte) {
	tb.Helper()
	plain, err := json.Marshal(key)
	if err != nil {
		tb.Fatal(err)
	}
	enc, err := jose.NewEncrypter(jose.DefaultEncAlgorithm, jose.Recipient{
		Algorithm: jose.PBES2_HS256_A128KW, Key: password,
		PBES2Count: testPBKDF2Iterations, PBES2Salt: []byte("stepcatest salt!"),
	}, new(jose.EncrypterOptions).WithContentType(jose.ContentType("jwk+json")))
	if err != nil {
		tb.Fatal(err)
	}
	jwe, err := enc.Encrypt(plain)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(jwe.FullSerialize()), 0o600); err != nil {
		tb.Fatal(err)
	}
}

func freeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return "127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func newKey(tb testing.TB) crypto.Signer {
	tb.Helper()
	k, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func mustCert(tb testing.TB, tmpl *x509util.Certificate, parent *x509.Certificate, key crypto.Signer) *x509.Certificate {
	tb.Helper()
	t := tmpl.GetCertificate()
	if parent == nil {
		parent = t
	}
	cert, err := x509util.CreateCertificate(t, parent, tmpl.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

func writePEM(tb testing.TB, path string, v any, perm os.FileMode) {
	tb.Helper()
	block, err := pemutil.Serialize(v)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), perm); err != nil {
		tb.Fatal(err)
	}
}
