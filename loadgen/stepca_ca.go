package loadgen

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"

	"github.com/edgeenroll/edgeenroll/pki"
)

// step-ca databases (StepCAConfig.DB).
const (
	// StepCADBBadger is what `step ca init` configures: BadgerDB v2 in a
	// directory. step-ca then stores every certificate it signs and every
	// token's ID (to refuse its reuse), as a production step-ca does.
	StepCADBBadger = "badgerv2"
	// StepCADBNone is step-ca without a database ("db" absent, `step ca
	// init --no-db`): used token IDs are kept in memory, certificates
	// nowhere.
	StepCADBNone = "none"
)

// StepCAProvisioner is the name of the JWK provisioner the benchmark's
// step-ca has.
const StepCAProvisioner = "enroll-bench"

// stepCAStartTimeout bounds how long step-ca may take to answer /health.
const stepCAStartTimeout = 60 * time.Second

// StepCAInfo describes the running step-ca.
type StepCAInfo struct {
	Binary string `json:"binary"`
	// Version is what `step-ca version` printed.
	Version string `json:"version"`
	URL     string `json:"url"`
	PID     int    `json:"pid"`
	// DB is the database configuration; Config is ca.json and Log its
	// output, in Dir (removed after the run unless it was given).
	DB     string `json:"db"`
	Dir    string `json:"dir"`
	Config string `json:"config"`
	Log    string `json:"log"`
	// Provisioner describes the provisioner and its tokens.
	Provisioner string `json:"provisioner"`
	// TLS is the version and key exchange of a probe connection.
	TLS string `json:"tls"`
}

// StepCA is a step-ca process started by StartStepCA.
type StepCA struct {
	Info StepCAInfo

	roots    *x509.CertPool
	key      *jose.JSONWebKey // the provisioner's private key
	audience string
	cmd      *exec.Cmd
	done     chan struct{} // closed when the process has exited
	waitErr  error
	logFile  *os.File
	ownDir   bool
}

// StartStepCA writes a step-ca configuration into dir (a new temporary
// directory if ""), as `step ca init` would for a standalone CA, and starts
// bin on it on a free loopback port, waiting for /health. The configuration:
//
//   - a root and an intermediate CA, ECDSA P-256 (step ca init's default),
//     made with go.step.sm/crypto; the intermediate key is encrypted with a
//     password given with --password-file;
//   - one JWK provisioner (ES256, P-256) with its private key also kept
//     encrypted in ca.json (encryptedKey), as step ca init leaves it, and
//     step-ca's default claims and x509 template;
//   - db (see StepCADBBadger and StepCADBNone), the text logger writing to
//     a file, step-ca's default TLS options, DNS names 127.0.0.1 and
//     localhost.
//
// Stop it with Stop.
func StartStepCA(ctx context.Context, bin, dir, db string) (*StepCA, error) {
	if db == "" {
		db = StepCADBBadger
	}
	if db != StepCADBBadger && db != StepCADBNone {
		return nil, fmt.Errorf("step-ca database %q: want %s or %s", db, StepCADBBadger, StepCADBNone)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return nil, fmt.Errorf("step-ca binary: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("step-ca binary %s is not an executable file", bin)
	}
	c := &StepCA{Info: StepCAInfo{Binary: bin}}
	if out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s version: %w: %s", bin, err, stepCALastLines(string(out), 5))
	} else {
		c.Info.Version = strings.Join(strings.Fields(strings.SplitN(string(out), "\n", 2)[0]), " ")
	}
	if dir == "" {
		if dir, err = os.MkdirTemp("", "enroll-bench-step-ca-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	}
	c.Info.Dir = dir
	files, err := writeStepCAFiles(c, dir, db)
	if err != nil {
		c.removeDir()
		return nil, err
	}
	// step-ca binds the address of its configuration: find a free port,
	// then let it bind; another process may take the port in between,
	// so try again then.
	for attempt := 1; ; attempt++ {
		addr, err := stepCAFreePort()
		if err == nil {
			err = c.start(ctx, files, addr)
		}
		if err == nil {
			return c, nil
		}
		c.Stop()
		if attempt == 3 || ctx.Err() != nil || !strings.Contains(err.Error(), "address already in use") {
			c.removeDir()
			return nil, err
		}
	}
}

// stepCAFiles are the paths writeStepCAFiles wrote.
type stepCAFiles struct {
	config   map[string]any
	password string
}

func writeStepCAFiles(c *StepCA, dir, db string) (*stepCAFiles, error) {
	for _, d := range []string{"certs", "secrets", "config"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	rootKey, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return nil, err
	}
	interKey, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return nil, err
	}
	root, err := stepCACert("enroll-bench step-ca Root CA", 1, rootKey.Public(), nil, rootKey)
	if err != nil {
		return nil, err
	}
	inter, err := stepCACert("enroll-bench step-ca Intermediate CA", 0, interKey.Public(), root, rootKey)
	if err != nil {
		return nil, err
	}
	c.roots = x509.NewCertPool()
	c.roots.AddCert(root)

	password := make([]byte, 24)
	if _, err := rand.Read(password); err != nil {
		return nil, err
	}
	password = []byte(hex.EncodeToString(password))
	rootFile := filepath.Join(dir, "certs", "root_ca.crt")
	interFile := filepath.Join(dir, "certs", "intermediate_ca.crt")
	interKeyFile := filepath.Join(dir, "secrets", "intermediate_ca_key")
	passwordFile := filepath.Join(dir, "secrets", "password")
	if err := writeStepCAPEM(rootFile, root); err != nil {
		return nil, err
	}
	if err := writeStepCAPEM(interFile, inter); err != nil {
		return nil, err
	}
	if err := writeStepCAPEM(interKeyFile, interKey, pemutil.WithPassword(password)); err != nil {
		return nil, err
	}
	if err := os.WriteFile(passwordFile, password, 0o600); err != nil {
		return nil, err
	}

	// The JWK provisioner, as `step ca init` makes it.
	key, err := jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0)
	if err != nil {
		return nil, err
	}
	if key.KeyID, err = jose.Thumbprint(key); err != nil {
		return nil, err
	}
	c.key = key
	enc, err := jose.EncryptJWK(key, password)
	if err != nil {
		return nil, fmt.Errorf("encrypting the provisioner key: %w", err)
	}
	encKey, err := enc.CompactSerialize()
	if err != nil {
		return nil, err
	}
	pub := key.Public()

	cfg := map[string]any{
		"root":            rootFile,
		"federatedRoots":  nil,
		"crt":             interFile,
		"key":             interKeyFile,
		"insecureAddress": "",
		"dnsNames":        []string{"127.0.0.1", "localhost"},
		"logger":          map[string]string{"format": "text"},
		"authority": map[string]any{
			"provisioners": []map[string]any{{
				"type": "JWK", "name": StepCAProvisioner, "key": &pub, "encryptedKey": encKey,
			}},
			"enableAdmin": false,
		},
		// step-ca's DefaultTLSOptions, which step ca init writes.
		"tls": map[string]any{
			"cipherSuites":  []string{"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
			"minVersion":    1.2,
			"maxVersion":    1.3,
			"renegotiation": false,
		},
		"commonName": "enroll-bench step-ca",
	}
	c.Info.DB = "none (used token IDs in memory, certificates not stored)"
	if db == StepCADBBadger {
		dbDir := filepath.Join(dir, "db")
		if err := os.MkdirAll(dbDir, 0o700); err != nil {
			return nil, err
		}
		cfg["db"] = map[string]string{"type": "badgerv2", "dataSource": dbDir, "badgerFileLoadingMode": ""}
		c.Info.DB = "badgerv2 in " + dbDir + " (step ca init's default: stores every certificate and used token ID)"
	}
	c.Info.Config = filepath.Join(dir, "config", "ca.json")
	c.Info.Log = filepath.Join(dir, "step-ca.log")
	c.Info.Provisioner = "JWK " + StepCAProvisioner + " (ES256); one-time token per request: sub = device ID, " +
		"sans = [spiffe URI], cnf x5rt#S256 = the CSR's SHA-256, as pki/stepca sends"
	return &stepCAFiles{config: cfg, password: passwordFile}, nil
}

// start writes ca.json for addr, starts step-ca and waits for /health.
func (c *StepCA) start(ctx context.Context, files *stepCAFiles, addr string) error {
	files.config["address"] = addr
	b, err := json.MarshalIndent(files.config, "", "\t")
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.Info.Config, b, 0o600); err != nil {
		return err
	}
	c.logFile, err = os.OpenFile(c.Info.Log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	c.cmd = exec.Command(c.Info.Binary, "--password-file", files.password, c.Info.Config)
	c.cmd.Stdout, c.cmd.Stderr = c.logFile, c.logFile
	c.cmd.SysProcAttr = stepCASysProcAttr()
	if err := c.cmd.Start(); err != nil {
		return fmt.Errorf("starting step-ca: %w", err)
	}
	c.done = make(chan struct{})
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.done)
	}()
	c.Info.PID = c.cmd.Process.Pid
	c.Info.URL = "https://" + addr
	c.audience = c.Info.URL + "/1.0/sign"

	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: c.roots, MinVersion: tls.VersionTLS12},
	}}
	defer client.CloseIdleConnections()
	wctx, cancel := context.WithTimeout(ctx, stepCAStartTimeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(wctx, http.MethodGet, c.Info.URL+"/health", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			err = fmt.Errorf("/health answered %s", resp.Status)
		}
		select {
		case <-c.done:
			return fmt.Errorf("step-ca exited (%v) before serving: %s", c.waitErr, c.logTail())
		case <-wctx.Done():
			return fmt.Errorf("step-ca did not answer %s/health within %s: %v; log: %s", c.Info.URL, stepCAStartTimeout, err, c.logTail())
		case <-time.After(25 * time.Millisecond):
		}
	}
	if c.Info.TLS, err = probeTLS(ctx, addr, c.roots); err != nil {
		return fmt.Errorf("step-ca %s: %w", c.Info.URL, err)
	}
	// step-ca refuses tokens issued (iat, in whole seconds) before it
	// started: let the clock pass the next whole second.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	return nil
}

// Stop stops step-ca (SIGINT, then SIGKILL after 10 s) and removes the
// directory StartStepCA made. Stopping twice is harmless.
func (c *StepCA) Stop() {
	if c.cmd != nil && c.cmd.Process != nil && c.done != nil {
		_ = c.cmd.Process.Signal(os.Interrupt)
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
	c.cmd, c.done = nil, nil
	if c.logFile != nil {
		c.logFile.Close()
		c.logFile = nil
	}
}

func (c *StepCA) removeDir() {
	if c.ownDir && c.Info.Dir != "" {
		os.RemoveAll(c.Info.Dir)
		c.Info.Dir = ""
	}
}

// Close stops step-ca and removes its directory if StartStepCA made it.
func (c *StepCA) Close() {
	c.Stop()
	c.removeDir()
}

// logTail is the end of step-ca's log, for error messages.
func (c *StepCA) logTail() string {
	b, err := os.ReadFile(c.Info.Log)
	if err != nil {
		return err.Error()
	}
	return stepCALastLines(string(b), 8)
}

// stepCAToken is a JWK provisioner's one-time token for /1.0/sign, as
// step-ca reads it (authority/provisioner/jwk.go) and pki/stepca signs it.
type stepCAToken struct {
	Issuer       string   `json:"iss"`
	Subject      string   `json:"sub"`
	Audience     string   `json:"aud"`
	NotBefore    int64    `json:"nbf"`
	IssuedAt     int64    `json:"iat"`
	Expiry       int64    `json:"exp"`
	ID           string   `json:"jti"`
	SANs         []string `json:"sans"`
	Confirmation struct {
		CSRSHA256 string `json:"x5rt#S256"`
	} `json:"cnf"`
}

// token signs a one-time token for deviceID's CSR, valid for lifetime.
func (c *StepCA) token(deviceID string, csrDER []byte, now time.Time, lifetime time.Duration) (string, error) {
	id := make([]byte, 32)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	sum := sha256.Sum256(csrDER)
	claims := stepCAToken{
		Issuer: StepCAProvisioner, Subject: deviceID, Audience: c.audience,
		NotBefore: now.Unix(), IssuedAt: now.Unix(), Expiry: now.Add(lifetime).Unix(),
		ID:   hex.EncodeToString(id),
		SANs: []string{pki.DeviceURI(pki.DefaultTrustDomain, deviceID).String()},
	}
	claims.Confirmation.CSRSHA256 = base64.RawURLEncoding.EncodeToString(sum[:])
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: c.key.Key},
		new(jose.SignerOptions).WithType("JWT").WithHeader("kid", c.key.KeyID))
	if err != nil {
		return "", err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}

// stepCACert makes a CA certificate named name for pub, valid for 30 days,
// signed by parent's key (self-signed when parent is nil).
func stepCACert(name string, maxPathLen int, pub crypto.PublicKey, parent *x509.Certificate, key crypto.Signer) (*x509.Certificate, error) {
	now := time.Now()
	tmpl := &x509util.Certificate{
		Subject:          x509util.Subject{CommonName: name},
		NotBefore:        now.Add(-time.Minute),
		NotAfter:         now.Add(30 * 24 * time.Hour),
		KeyUsage:         x509util.KeyUsage(x509.KeyUsageCertSign | x509.KeyUsageCRLSign),
		BasicConstraints: &x509util.BasicConstraints{IsCA: true, MaxPathLen: maxPathLen},
		PublicKey:        pub,
	}
	t := tmpl.GetCertificate()
	if parent == nil {
		parent = t
	}
	return x509util.CreateCertificate(t, parent, pub, key)
}

func writeStepCAPEM(path string, v any, opts ...pemutil.Options) error {
	block, err := pemutil.Serialize(v, opts...)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
}

func stepCAFreePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return "127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), nil
}

// errStepCAStopped is returned by a run against a step-ca that has exited.
var errStepCAStopped = errors.New("step-ca has exited")

// alive reports an error if the process has exited.
func (c *StepCA) alive() error {
	if c.done == nil {
		return errStepCAStopped
	}
	select {
	case <-c.done:
		return fmt.Errorf("%w (%v): %s", errStepCAStopped, c.waitErr, c.logTail())
	default:
		return nil
	}
}
