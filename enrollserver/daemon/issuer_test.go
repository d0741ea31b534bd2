package daemon_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/enrollserver/daemon"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/pki/stepca"
	"github.com/edgeenroll/edgeenroll/pki/stepca/stepcatest"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// The simulator is one per process: these tests run sequentially, and each
// agent closes its TPM.

// clientAuthTemplate is the provisioner template README recommends.
const clientAuthTemplate = `{"subject": {{ toJson .Subject }}, "sans": {{ toJson .SANs }}, "keyUsage": ["digitalSignature"], "extKeyUsage": ["clientAuth"]}`

// enrolld is a running daemon.Run.
type enrolld struct {
	url     string
	addr    string
	dataDir string
	// stop stops it and reports Run's error; later calls return nil.
	stop func() error
}

// startEnrolld runs enrolld with device certificates from sca (nil: the
// embedded CA), trusting mfr's EK certificates, until the test ends.
func startEnrolld(t *testing.T, sca *stepcatest.CA, mfr *tpmsim.Manufacturer, edit ...func(*daemon.Config)) (*enrolld, error) {
	t.Helper()
	dir := t.TempDir()
	mfrFile := filepath.Join(dir, "manufacturer.pem")
	if err := os.WriteFile(mfrFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mfr.Certificate.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := daemon.Config{
		DataDir:           filepath.Join(dir, "data"),
		Listen:            "127.0.0.1:0",
		ManufacturerRoots: []string{mfrFile},
		LeafLifetime:      time.Hour,
		Logger:            slog.New(slog.DiscardHandler),
	}
	if sca != nil {
		cfg.Issuer = daemon.IssuerConfig{Kind: daemon.IssuerStepCA, StepCA: daemon.StepCAConfig{
			URL: sca.URL, RootFile: sca.RootFile, Provisioner: sca.Provisioner,
			ProvisionerKeyFile: sca.KeyFile, ProvisionerPasswordFile: sca.PasswordFile,
			Timeout: 2 * time.Second,
		}}
	}
	for _, e := range edit {
		e(&cfg)
	}
	ready := make(chan string, 1)
	cfg.Ready = ready
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- daemon.Run(ctx, cfg) }()
	select {
	case addr := <-ready:
		stopped := false
		stop := func() error {
			if stopped {
				return nil
			}
			stopped = true
			cancel()
			return <-errc
		}
		t.Cleanup(func() {
			if err := stop(); err != nil {
				t.Errorf("enrolld: %v", err)
			}
		})
		return &enrolld{url: "https://" + addr, addr: addr, dataDir: cfg.DataDir, stop: stop}, nil
	case err := <-errc:
		cancel()
		return nil, err
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("enrolld did not start")
		return nil, nil
	}
}

// deviceRoots is a device's trust: the enrollment root and, with a step-ca
// issuing device certificates, its root.
func (e *enrolld) deviceRoots(t *testing.T, extra ...*x509.Certificate) *x509.CertPool {
	t.Helper()
	data, err := os.ReadFile(daemon.RootCertPath(e.dataDir))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatal("no enrollment root")
	}
	for _, c := range extra {
		pool.AddCert(c)
	}
	return pool
}

func newManufacturer(t *testing.T) *tpmsim.Manufacturer {
	t.Helper()
	mfr, err := tpmsim.NewManufacturer("test vendor")
	if err != nil {
		t.Fatal(err)
	}
	return mfr
}

func newTPM(t *testing.T) (string, *tpmsim.Manufacturer) {
	t.Helper()
	mfr := newManufacturer(t)
	dir := filepath.Join(t.TempDir(), "tpm")
	if _, err := tpmsim.ManufactureState(dir, mfr); err != nil {
		t.Skipf("the TPM simulator is required (cgo, gcc, libssl-dev): %v", err)
	}
	return dir, mfr
}

func newAgent(t *testing.T, e *enrolld, tpmDir string, roots *x509.CertPool) *device.Agent {
	t.Helper()
	sim, err := tpmsim.OpenState(tpmDir)
	if err != nil {
		t.Fatalf("the TPM simulator is required (cgo, gcc, libssl-dev): %v", err)
	}
	a, err := device.New(context.Background(), device.Config{
		ServerURL: e.url, Roots: roots, TPM: sim, CachePath: filepath.Join(t.TempDir(), "agent.db"),
		RequestTimeout: 10 * time.Second, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

var once = device.RetryPolicy{Attempts: 1}

// A device attested by enrolld gets its certificate from the step-ca: the
// chain leads to the step-ca's root, the device verifies it against a root
// pool holding both roots, and the certificate works for mTLS to enrolld.
func TestEnrollWithStepCA(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	sca := stepcatest.Start(t, &stepcatest.Options{Template: clientAuthTemplate})
	e, err := startEnrolld(t, sca, mfr)
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, e, tpmDir, e.deviceRoots(t, sca.Root))
	start := time.Now()
	res, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("enrolled through attestation and step-ca in %s", time.Since(start).Round(time.Millisecond))

	leaf := res.Leaf
	if len(res.Chain) != 2 || !res.Chain[1].Equal(sca.Intermediate) {
		t.Fatalf("chain is not the leaf and step-ca's intermediate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: sca.RootPool(), Intermediates: pool(res.Chain[1]), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not chain to step-ca's root: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.deviceRoots(t), Intermediates: pool(res.Chain[1]), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("leaf chains to the enrollment root; want the step-ca's")
	}
	if id, err := pki.DeviceIDFromCertificate(leaf, pki.DefaultTrustDomain); err != nil || id != a.DeviceID() {
		t.Errorf("leaf names %q (%v); want %s", id, err, a.DeviceID())
	}
	if eku := leaf.ExtKeyUsage; len(eku) != 1 || eku[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage = %v; want the template's clientAuth", eku)
	}
	if life := leaf.NotAfter.Sub(start); life > time.Hour+time.Minute || life < 58*time.Minute {
		t.Errorf("leaf lifetime %s; want enrolld's --cert-lifetime of 1h", life)
	}
	// The bundle is still ours.
	if res.Bundle == nil || res.Bundle.Version != 1 {
		t.Errorf("bundle = %+v", res.Bundle)
	}
	who, err := a.Whoami(context.Background())
	if err != nil {
		t.Fatalf("whoami with the step-ca certificate: %v", err)
	}
	if who.DeviceID != a.DeviceID() || who.Serial != leaf.SerialNumber.Text(16) {
		t.Errorf("whoami = %+v", who)
	}

	// Renewal: a full re-attestation, a new step-ca certificate.
	again, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	if again.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("renewal returned the same certificate")
	}
}

// A device that trusts only the enrollment root refuses a step-ca chain:
// the roots must be installed together.
func TestEnrollWithStepCANeedsItsRootOnTheDevice(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	sca := stepcatest.Start(t, nil)
	e, err := startEnrolld(t, sca, mfr)
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, e, tpmDir, e.deviceRoots(t))
	_, err = a.Enroll(context.Background(), once)
	if err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("err = %v; want the chain refused", err)
	}
}

// step-ca down: the device gets an internal error promptly, not a hang.
func TestEnrollWithStepCADown(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	sca := stepcatest.Start(t, nil)
	e, err := startEnrolld(t, sca, mfr)
	if err != nil {
		t.Fatal(err)
	}
	sca.Stop()
	a := newAgent(t, e, tpmDir, e.deviceRoots(t, sca.Root))
	start := time.Now()
	_, err = a.Enroll(context.Background(), once)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeInternal {
		t.Fatalf("err = %v; want the server's %s", err, api.CodeInternal)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %s", el)
	}
}

// A wrong provisioner key stops enrolld at startup with the reason; so do
// incomplete flags.
func TestStepCAConfigRefused(t *testing.T) {
	mfr := newManufacturer(t)
	sca := stepcatest.Start(t, nil)
	_, wrong := stepcatest.NewJWKProvisioner(t, sca.Provisioner)
	wrongFile := filepath.Join(t.TempDir(), "wrong.json")
	stepcatest.WriteEncryptedKey(t, wrongFile, wrong, []byte("pw"))
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte("pw"), 0o600)

	tests := []struct {
		name string
		edit func(*daemon.Config)
		is   error
		want string
	}{
		{"wrong provisioner key", func(c *daemon.Config) {
			c.Issuer.StepCA.ProvisionerKeyFile, c.Issuer.StepCA.ProvisionerPasswordFile = wrongFile, pwFile
		}, stepca.ErrProvisioner, "not this provisioner's"},
		{"wrong password", func(c *daemon.Config) { c.Issuer.StepCA.ProvisionerPasswordFile = pwFile }, stepca.ErrProvisionerKey, "wrong password"},
		{"unknown provisioner", func(c *daemon.Config) { c.Issuer.StepCA.Provisioner = "nobody" }, stepca.ErrProvisioner, "nobody"},
		{"missing flags", func(c *daemon.Config) { c.Issuer.StepCA.URL, c.Issuer.StepCA.RootFile = "", "" }, nil, "--stepca-url --stepca-root"},
		{"stepca flags without --issuer stepca", func(c *daemon.Config) { c.Issuer.Kind = "" }, nil, "--issuer is not stepca"},
		{"unknown issuer", func(c *daemon.Config) { c.Issuer.Kind = "vault" }, nil, "vault"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := startEnrolld(t, sca, mfr, tt.edit)
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want %v about %q", err, tt.is, tt.want)
			}
		})
	}
}

// enrolld trusts the step-ca root for device certificates it obtained, and
// for nothing else: a step-ca certificate naming an operator, or a device
// certificate the step-ca issued outside enrollment, fails the handshake.
func TestStepCAClientCertificatePolicy(t *testing.T) {
	mfr := newManufacturer(t)
	sca := stepcatest.Start(t, nil)
	e, err := startEnrolld(t, sca, mfr)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forge := func(cn string, uri *url.URL) tls.Certificate {
		chain := sca.IssueLeaf(t, &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()),
			Subject:      pkix.Name{CommonName: cn}, URIs: []*url.URL{uri},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, &key.PublicKey)
		return tls.Certificate{Certificate: [][]byte{chain[0].Raw, chain[1].Raw}, PrivateKey: key, Leaf: chain[0]}
	}
	call := func(cert tls.Certificate, path string) error {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: e.deviceRoots(t), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
		}}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(e.url + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status + ": " + string(body))
		}
		return nil
	}

	// The bootstrap admin credential (enrollment CA) still works.
	admin, err := tls.LoadX509KeyPair(filepath.Join(daemon.AdminDir(e.dataDir), "operator.crt"), filepath.Join(daemon.AdminDir(e.dataDir), "operator.key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := call(admin, api.PathAdminStatus); err != nil {
		t.Fatalf("admin credential: %v", err)
	}
	operator := forge("operator evil", pki.OperatorURI(pki.DefaultTrustDomain, pki.RoleAdmin, "evil"))
	if err := call(operator, api.PathAdminStatus); err == nil {
		t.Error("a step-ca certificate naming an admin operator was accepted")
	}
	id := strings.Repeat("ab", 32)
	stranger := forge(id, pki.DeviceURI(pki.DefaultTrustDomain, id))
	if err := call(stranger, api.PathWhoami); err == nil {
		t.Error("a step-ca device certificate that enrolld never obtained was accepted")
	}
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// Rotating the intermediate re-enrolls no device: the device's cached
// certificate keeps verifying and keeps working for mTLS against the
// restarted enrolld, and its next enrollment gets a certificate through the
// new intermediate.
func TestRotateIntermediateKeepsDevicesEnrolled(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	embedded := func(c *daemon.Config) { c.Issuer, c.DataDir = daemon.IssuerConfig{}, dataDir }
	e, err := startEnrolld(t, nil, mfr, embedded)
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, e, tpmDir, e.deviceRoots(t))
	before, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.stop(); err != nil {
		t.Fatal(err)
	}

	rot, err := daemon.RotateIntermediate(dataDir, daemon.IssuerConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !before.Chain[1].Equal(rot.OldIntermediate) {
		t.Fatal("the device's chain is not through the rotated-out intermediate")
	}
	e, err = startEnrolld(t, nil, mfr, embedded, func(c *daemon.Config) { c.Listen = e.addr })
	if err != nil {
		t.Fatal(err)
	}

	// The device is still ready from its cache, and its old certificate
	// still authenticates it.
	if st := a.CachedState(time.Now()); !st.Ready {
		t.Fatalf("device not ready from its cache after the rotation: %s", st.Reason)
	}
	who, err := a.Whoami(context.Background())
	if err != nil || who.Serial != before.Leaf.SerialNumber.Text(16) {
		t.Fatalf("whoami with the pre-rotation certificate: %+v, %v", who, err)
	}
	// Its next enrollment chains through the new intermediate.
	after, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	if !after.Chain[1].Equal(rot.NewIntermediate) {
		t.Error("the certificate issued after the rotation is not from the new intermediate")
	}
	// (The agent keeps its mTLS connection across a renewal, so whoami may
	// still show the earlier certificate; both are valid.)
	if who, err := a.Whoami(context.Background()); err != nil || who.DeviceID != a.DeviceID() {
		t.Errorf("whoami after the re-enrollment: %+v, %v", who, err)
	}
	// Revocation still covers the pre-rotation certificate: crl.pem holds
	// a list signed by the old intermediate, under the leaf's issuer key.
	data, err := os.ReadFile(daemon.CRLPEMPath(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	covers := func(leaf, issuer *x509.Certificate) bool {
		for rest := data; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				return false
			}
			crl, err := x509.ParseRevocationList(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(crl.AuthorityKeyId, leaf.AuthorityKeyId) && bytes.Equal(crl.RawIssuer, leaf.RawIssuer) && crl.CheckSignatureFrom(issuer) == nil {
				return true
			}
		}
	}
	if !covers(before.Leaf, rot.OldIntermediate) || !covers(after.Leaf, rot.NewIntermediate) {
		t.Errorf("crl.pem does not cover the certificates of both intermediates")
	}
}

// withX5C configures enrolld for sca's X5C provisioner instead of its JWK
// provisioner.
func withX5C(sca *stepcatest.CA) func(*daemon.Config) {
	return func(c *daemon.Config) {
		sc := &c.Issuer.StepCA
		sc.Provisioner, sc.ProvisionerKeyFile = sca.X5CProvisioner, ""
		sc.X5CCertFile, sc.X5CKeyFile = sca.X5CCertFile, sca.X5CKeyFile
	}
}

// With an X5C credential (--stepca-x5c-cert, --stepca-x5c-key) the step-ca's
// X5C provisioner issues the device certificate, which ends no later than
// the credential.
func TestEnrollWithStepCAX5C(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	sca := stepcatest.Start(t, &stepcatest.Options{Template: clientAuthTemplate})
	e, err := startEnrolld(t, sca, mfr, withX5C(sca))
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, e, tpmDir, e.deviceRoots(t, sca.Root))
	res, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Leaf.Verify(x509.VerifyOptions{Roots: sca.RootPool(), Intermediates: pool(res.Chain[1:]...), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf does not chain to step-ca's root: %v", err)
	}
	if res.Leaf.NotAfter.After(sca.X5CChain[0].NotAfter) {
		t.Errorf("leaf ends %s, after the x5c credential's %s", res.Leaf.NotAfter, sca.X5CChain[0].NotAfter)
	}
	if who, err := a.Whoami(context.Background()); err != nil || who.Serial != res.Leaf.SerialNumber.Text(16) {
		t.Errorf("whoami with the step-ca certificate: %+v, %v", who, err)
	}
}

// X5C flags: exactly one credential, complete, and one the step-ca's X5C
// provisioner accepts.
func TestStepCAX5CConfigRefused(t *testing.T) {
	mfr := newManufacturer(t)
	sca := stepcatest.Start(t, nil)
	dir := t.TempDir()
	now := time.Now()
	writeCred := func(name string, chain []*x509.Certificate, key crypto.Signer) (string, string) {
		certFile, keyFile := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
		stepcatest.WriteChain(t, certFile, chain)
		stepcatest.WriteKey(t, keyFile, key, nil)
		return certFile, keyFile
	}
	chain, key := stepcatest.NewX5CAuthority(t, "forged").Issue(t, "enrolld", now.Add(-time.Minute), now.Add(time.Hour))
	forgedCert, forgedKey := writeCred("forged", chain, key)
	chain, key = sca.X5C.Issue(t, "enrolld", now.Add(-2*time.Hour), now.Add(-time.Hour))
	expiredCert, expiredKey := writeCred("expired", chain, key)
	x5c := withX5C(sca)
	tests := []struct {
		name string
		edit func(*daemon.Config)
		is   error
		want string
	}{
		{"JWK key and x5c", func(c *daemon.Config) { x5c(c); c.Issuer.StepCA.ProvisionerKeyFile = sca.KeyFile }, nil, "exclude each other"},
		{"x5c cert without key", func(c *daemon.Config) { x5c(c); c.Issuer.StepCA.X5CKeyFile = "" }, nil, "--stepca-x5c-key"},
		{"x5c key without cert", func(c *daemon.Config) { x5c(c); c.Issuer.StepCA.X5CCertFile = "" }, nil, "--stepca-x5c-cert"},
		{"no credential", func(c *daemon.Config) { c.Issuer.StepCA.ProvisionerKeyFile = "" }, nil, "--stepca-provisioner-key (JWK provisioner) or --stepca-x5c-cert"},
		{"forged chain", func(c *daemon.Config) {
			x5c(c)
			c.Issuer.StepCA.X5CCertFile, c.Issuer.StepCA.X5CKeyFile, c.Issuer.StepCA.ProvisionerPasswordFile = forgedCert, forgedKey, ""
		}, stepca.ErrProvisioner, "does not chain to the roots"},
		{"expired credential", func(c *daemon.Config) {
			x5c(c)
			c.Issuer.StepCA.X5CCertFile, c.Issuer.StepCA.X5CKeyFile, c.Issuer.StepCA.ProvisionerPasswordFile = expiredCert, expiredKey, ""
		}, stepca.ErrCredentialExpired, "valid from"},
		{"x5c for the JWK provisioner", func(c *daemon.Config) { x5c(c); c.Issuer.StepCA.Provisioner = sca.Provisioner }, stepca.ErrProvisioner, "of type JWK"},
		{"x5c flags without --issuer stepca", func(c *daemon.Config) {
			c.Issuer = daemon.IssuerConfig{StepCA: daemon.StepCAConfig{X5CCertFile: sca.X5CCertFile}}
		}, nil, "--issuer is not stepca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := startEnrolld(t, sca, mfr, tt.edit)
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want %v about %q", err, tt.is, tt.want)
			}
		})
	}
}

// An operator's revoke through enrolld's admin API reaches the step-ca;
// when the step-ca is down then, enrolld's retry pass forwards it once the
// step-ca is back.
func TestStepCARevocationForwarded(t *testing.T) {
	tpmDir, mfr := newTPM(t)
	sca := stepcatest.Start(t, &stepcatest.Options{Template: clientAuthTemplate})
	e, err := startEnrolld(t, sca, mfr, func(c *daemon.Config) { c.Issuer.StepCA.RevocationRetryInterval = 100 * time.Millisecond })
	if err != nil {
		t.Fatal(err)
	}
	a := newAgent(t, e, tpmDir, e.deviceRoots(t, sca.Root))
	res, err := a.Enroll(context.Background(), once)
	if err != nil {
		t.Fatal(err)
	}
	serial := res.Leaf.SerialNumber.Text(16)

	sca.Stop()
	if err := e.admin(t, api.PathAdminDevices+"/"+string(api.ActionRevoke), &api.DeviceActionRequest{DeviceIDs: []string{a.DeviceID()}, Reason: "stolen"}); err != nil {
		t.Fatalf("revoke with step-ca down: %v", err)
	}
	start := time.Now()
	sca.Restart(t)
	for !slices.Contains(sca.RevokedSerials(t), serial) {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("serial %s did not reach step-ca's CRL", serial)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the revocation reached step-ca %s after it came back", time.Since(start).Round(time.Millisecond))
}

// admin POSTs v to enrolld's admin API with the bootstrap admin credential.
func (e *enrolld) admin(t *testing.T, path string, v any) error {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(daemon.AdminDir(e.dataDir), "operator.crt"), filepath.Join(daemon.AdminDir(e.dataDir), "operator.key"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: e.deviceRoots(t), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
	}}}
	defer c.CloseIdleConnections()
	resp, err := c.Post(e.url+path, api.ContentTypeJSON, bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status + ": " + string(out))
	}
	return nil
}
