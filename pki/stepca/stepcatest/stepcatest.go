// Package stepcatest runs a real step-ca for tests: the CA server of
// github.com/smallstep/certificates, in process, on a loopback port, with
// its own throwaway root, intermediate and database (bbolt, so it can
// revoke, with a CRL regenerated on every revocation), one JWK provisioner
// whose private key is written to a file encrypted with a password, the
// way `step ca init` leaves it, and one X5C provisioner with a credential
// chaining to its roots.
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
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	stepca "github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/db"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"
)

// ProvisionerName is the name of the JWK provisioner Start configures.
const ProvisionerName = "edgeenroll"

// X5CProvisionerName is the name of the X5C provisioner Start configures.
const X5CProvisionerName = "edgeenroll-x5c"

// startTimeout bounds how long Start waits for the CA to answer /health.
const startTimeout = 10 * time.Second

// Options configure the test CA. A nil *Options means the zero value:
// step-ca's defaults (leaves of 5 minutes to 24 hours, the default x509
// template with serverAuth and clientAuth).
type Options struct {
	// MinTLSCertDuration, MaxTLSCertDuration and DefaultTLSCertDuration
	// become the provisioner's claims when set.
	MinTLSCertDuration, MaxTLSCertDuration, DefaultTLSCertDuration time.Duration
	// Template, if set, is the x509 template (JSON, with step's template
	// functions) of the JWK and the X5C provisioner.
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

	// X5CProvisioner is the X5C provisioner's name; its roots are
	// X5C.Root.
	X5CProvisioner string
	X5C            *X5CAuthority
	// X5CChain and X5CKey are a credential for it, valid for a day:
	// X5CCertFile holds the chain (leaf, intermediate) and X5CKeyFile the
	// key, encrypted with the password in PasswordFile.
	X5CChain    []*x509.Certificate
	X5CKey      crypto.Signer
	X5CCertFile string
	X5CKeyFile  string

	interKey crypto.Signer
	// newConfig builds a fresh step-ca configuration listening on addr
	// (provisioners are initialised by the authority, so never reused).
	newConfig func(addr string) *config.Config
	addr      string
	srv       *stepca.CA
	done      chan error
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

	_, key := NewJWKProvisioner(tb, ProvisionerName)
	c.Key = key
	password := []byte("stepcatest provisioner password")
	c.KeyFile = filepath.Join(c.Dir, "provisioner.jwk.json")
	c.PasswordFile = filepath.Join(c.Dir, "provisioner.password")
	WriteEncryptedKey(tb, c.KeyFile, key, password)
	if err := os.WriteFile(c.PasswordFile, append(password, '\n'), 0o600); err != nil {
		tb.Fatal(err)
	}
	c.X5CProvisioner = X5CProvisionerName
	c.X5C = NewX5CAuthority(tb, "stepcatest X5C")
	c.X5CChain, c.X5CKey = c.X5C.Issue(tb, "enrolld", now.Add(-time.Minute), now.Add(24*time.Hour))
	c.X5CCertFile = filepath.Join(c.Dir, "x5c.crt")
	c.X5CKeyFile = filepath.Join(c.Dir, "x5c.key")
	WriteChain(tb, c.X5CCertFile, c.X5CChain)
	writePEM(tb, c.X5CKeyFile, c.X5CKey, 0o600, pemutil.WithPassword(password))
	x5cRoots := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.X5C.Root.Raw})

	claims := func() *provisioner.Claims {
		claims := &provisioner.Claims{}
		for _, d := range []struct {
			v   time.Duration
			dst **provisioner.Duration
		}{{opts.MinTLSCertDuration, &claims.MinTLSDur}, {opts.MaxTLSCertDuration, &claims.MaxTLSDur}, {opts.DefaultTLSCertDuration, &claims.DefaultTLSDur}} {
			if d.v != 0 {
				*d.dst = &provisioner.Duration{Duration: d.v}
			}
		}
		return claims
	}
	template := func(tmpl string) *provisioner.Options {
		if tmpl == "" {
			return nil
		}
		return &provisioner.Options{X509: &provisioner.X509Options{Template: tmpl}}
	}
	c.Keys = map[string]*jose.JSONWebKey{}
	for name := range opts.Templates {
		_, c.Keys[name] = NewJWKProvisioner(tb, name)
	}
	jwkProvisioner := func(name string, key *jose.JSONWebKey, opts *provisioner.Options) *provisioner.JWK {
		pub := key.Public()
		return &provisioner.JWK{Type: "JWK", Name: name, Key: &pub, Claims: claims(), Options: opts}
	}

	dnsNames := opts.DNSNames
	if len(dnsNames) == 0 {
		dnsNames = []string{"127.0.0.1", "localhost"}
	}
	dbFile := filepath.Join(c.Dir, "db", "step.db")
	if err := os.MkdirAll(filepath.Dir(dbFile), 0o700); err != nil {
		tb.Fatal(err)
	}
	c.newConfig = func(addr string) *config.Config {
		provs := provisioner.List{
			jwkProvisioner(ProvisionerName, c.Key, template(opts.Template)),
			&provisioner.X5C{Type: "X5C", Name: X5CProvisionerName, Roots: x5cRoots, Claims: claims(), Options: template(opts.Template)},
		}
		for name, tmpl := range opts.Templates {
			provs = append(provs, jwkProvisioner(name, c.Keys[name], template(tmpl)))
		}
		return &config.Config{
			Root:             []string{c.RootFile},
			IntermediateCert: interFile,
			IntermediateKey:  interKeyFile,
			Address:          addr,
			DNSNames:         dnsNames,
			DB:               &db.Config{Type: "bbolt", DataSource: dbFile},
			CRL:              &config.CRLConfig{Enabled: true, GenerateOnRevoke: true},
			AuthorityConfig:  &config.AuthConfig{Provisioners: provs},
		}
	}

	// step-ca listens with ListenAndServe, so it cannot take a listener:
	// find a free port, then let it bind that port. Another process may
	// take the port in between; retry then.
	var lastErr error
	for range 3 {
		if lastErr = c.run(tb, freeLoopbackAddr(tb)); lastErr == nil {
			tb.Cleanup(c.Stop)
			return c
		}
	}
	tb.Fatalf("stepcatest: step-ca did not start: %v", lastErr)
	return nil
}

// run starts step-ca on addr and waits until it answers.
func (c *CA) run(tb testing.TB, addr string) error {
	tb.Helper()
	srv, err := stepca.New(c.newConfig(addr), stepca.WithQuiet(true))
	if err != nil {
		tb.Fatalf("stepcatest: creating step-ca: %v", err)
	}
	c.srv, c.done, c.addr = srv, make(chan error, 1), addr
	go func() { c.done <- srv.Run() }()
	c.URL = "https://" + addr
	if err := c.waitHealthy(startTimeout); err != nil {
		c.Stop()
		return err
	}
	return nil
}

// Restart starts the CA again after Stop, on the same address, with the
// same keys and database (its revocations and used tokens survive). It
// fails the test if the CA does not come up.
func (c *CA) Restart(tb testing.TB) {
	tb.Helper()
	c.Stop()
	if err := c.run(tb, c.addr); err != nil {
		tb.Fatalf("stepcatest: restarting step-ca on %s: %v", c.addr, err)
	}
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

// RevokedSerials returns the serial numbers (hex) on the CA's current CRL,
// which step-ca regenerates on every revocation; it fails the test if the
// CRL cannot be fetched or is not signed by the intermediate.
func (c *CA) RevokedSerials(tb testing.TB) []string {
	tb.Helper()
	client := c.client(nil)
	defer client.CloseIdleConnections()
	resp, err := client.Get(c.URL + "/1.0/crl")
	if err != nil {
		tb.Fatalf("stepcatest: fetching the CRL: %v", err)
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("stepcatest: fetching the CRL: %s, %v", resp.Status, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		tb.Fatalf("stepcatest: parsing the CRL: %v", err)
	}
	if err := crl.CheckSignatureFrom(c.Intermediate); err != nil {
		tb.Fatalf("stepcatest: CRL signature: %v", err)
	}
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, e.SerialNumber.Text(16))
	}
	return out
}

// Renew asks the CA to renew chain over mutual TLS with key, as `step ca
// renew` does, and returns the new chain. step-ca refuses a revoked
// certificate; the error holds its answer.
func (c *CA) Renew(chain []*x509.Certificate, key crypto.Signer) ([]*x509.Certificate, error) {
	cert := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		cert.Certificate = append(cert.Certificate, x.Raw)
	}
	client := c.client(cert)
	defer client.CloseIdleConnections()
	resp, err := client.Post(c.URL+"/1.0/renew", "application/json", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("renew answered %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var sr struct {
		CertChain []string `json:"certChain"`
	}
	if err := json.Unmarshal(body, &sr); err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, p := range sr.CertChain {
		block, _ := pem.Decode([]byte(p))
		if block == nil {
			return nil, errors.New("renew answered a chain that is not PEM")
		}
		x, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// client is an HTTPS client trusting the root, presenting cert if set.
func (c *CA) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: c.RootPool(), MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
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
	client := c.client(nil)
	client.Timeout = time.Second
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

// X5CAuthority is a small CA for X5C credentials: a root, which an X5C
// provisioner lists as its roots, and an intermediate that issues
// credentials. One that no provisioner lists makes forged credentials.
type X5CAuthority struct {
	Root, Intermediate *x509.Certificate
	interKey           crypto.Signer
}

// NewX5CAuthority makes a root and an intermediate named after name, valid
// for a day.
func NewX5CAuthority(tb testing.TB, name string) *X5CAuthority {
	tb.Helper()
	rootKey, interKey := newKey(tb), newKey(tb)
	now := time.Now()
	a := &X5CAuthority{interKey: interKey}
	a.Root = mustCert(tb, &x509util.Certificate{
		Subject:          x509util.Subject{CommonName: name + " Root"},
		NotBefore:        now.Add(-time.Hour),
		NotAfter:         now.Add(24 * time.Hour),
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 1},
		PublicKey:        rootKey.Public(),
	}, nil, rootKey)
	a.Intermediate = mustCert(tb, &x509util.Certificate{
		Subject:          x509util.Subject{CommonName: name + " Intermediate"},
		NotBefore:        now.Add(-time.Hour),
		NotAfter:         now.Add(24 * time.Hour),
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: 0},
		PublicKey:        interKey.Public(),
	}, a.Root, rootKey)
	return a
}

// Issue makes an X5C credential for cn valid from notBefore to notAfter:
// a P-256 key and its chain (leaf with digitalSignature and clientAuth,
// then the intermediate).
func (a *X5CAuthority) Issue(tb testing.TB, cn string, notBefore, notAfter time.Time) ([]*x509.Certificate, crypto.Signer) {
	tb.Helper()
	key := newKey(tb)
	leaf := mustCert(tb, &x509util.Certificate{
		Subject:      x509util.Subject{CommonName: cn},
		SerialNumber: x509util.SerialNumber{Int: big.NewInt(time.Now().UnixNano())},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage:  x509util.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		PublicKey:    key.Public(),
	}, a.Intermediate, a.interKey)
	return []*x509.Certificate{leaf, a.Intermediate}, key
}

// IssueTemplate signs tmpl for pub with the intermediate and returns the
// chain (leaf, intermediate): credentials with unusual usages.
func (a *X5CAuthority) IssueTemplate(tb testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) []*x509.Certificate {
	tb.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	}
	leaf, err := x509util.CreateCertificate(tmpl, a.Intermediate, pub, a.interKey)
	if err != nil {
		tb.Fatal(err)
	}
	return []*x509.Certificate{leaf, a.Intermediate}
}

// WriteChain writes certs to path as PEM, in order.
func WriteChain(tb testing.TB, path string, certs []*x509.Certificate) {
	tb.Helper()
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// WriteKey writes key to path as PEM (PKCS#8), encrypted with password
// unless it is empty.
func WriteKey(tb testing.TB, path string, key crypto.Signer, password []byte) {
	tb.Helper()
	var opts []pemutil.Options
	if len(password) > 0 {
		opts = append(opts, pemutil.WithPassword(password))
	}
	writePEM(tb, path, key, 0o600, append(opts, pemutil.WithPKCS8(true))...)
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

func writePEM(tb testing.TB, path string, v any, perm os.FileMode, opts ...pemutil.Options) {
	tb.Helper()
	block, err := pemutil.Serialize(v, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), perm); err != nil {
		tb.Fatal(err)
	}
}
