package attest_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"testing"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	"github.com/edgeenroll/edgeenroll/attest"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// The simulator is a process-wide singleton that must never be used from two
// goroutines: TestMain opens one TPM for the whole test binary, and tests
// that use it run sequentially (no t.Parallel) and close every AK and key
// they create (only ~2 transient objects fit).

// fixture is the shared device: a simulated TPM with an RSA EK, its EK
// certificate issued by a throwaway manufacturer and provisioned in NV, and
// PCRs 0..7 extended so that their values are not all zero.
type fixture struct {
	sim   *tpmsim.TPM
	tpm   *goattest.TPM
	ek    goattest.EK
	ekDER []byte // PKIX
	mfr   *tpmsim.Manufacturer
	roots *x509.CertPool
	// golden is one complete enrollment with an ECDSA AK, made once.
	golden *evidence
}

// fx is nil when the simulator is unavailable (no cgo); tests that need it
// call needTPM.
var fx *fixture

// fixtureErr says why fx is nil.
var fixtureErr error

const fixtureSeed = 20240601

// quotedPCRs are the PCRs every test quote covers.
var quotedPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}

func TestMain(m *testing.M) {
	sim, err := tpmsim.Open(fixtureSeed)
	if err != nil {
		fixtureErr = err
		os.Exit(m.Run())
	}
	fx, err = newFixture(sim)
	if err != nil {
		sim.Close()
		fmt.Fprintf(os.Stderr, "attest tests: setting up the simulated TPM: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	if err := sim.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "attest tests: closing the simulator: %v\n", err)
		code = 1
	}
	os.Exit(code)
}

func newFixture(sim *tpmsim.TPM) (*fixture, error) {
	// Measure something into PCRs 0..7, as firmware would.
	for _, i := range quotedPCRs {
		d := sha256.Sum256([]byte(fmt.Sprintf("test firmware component %d", i)))
		extend := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(i), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
		}
		if _, err := extend.Execute(sim); err != nil {
			return nil, fmt.Errorf("extending PCR %d: %w", i, err)
		}
	}

	tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: sim})
	if err != nil {
		return nil, err
	}
	eks, err := tpm.EKs()
	if err != nil || len(eks) == 0 {
		return nil, fmt.Errorf("reading EK: %v (%d EKs)", err, len(eks))
	}

	// The factory: a manufacturer signs the EK, and the certificate goes
	// into NV where go-attestation finds it.
	mfr, err := tpmsim.NewManufacturer("attest test TPM manufacturer")
	if err != nil {
		return nil, err
	}
	certDER, err := mfr.IssueEKCertificate(eks[0].Public)
	if err != nil {
		return nil, err
	}
	if err := tpmsim.ProvisionEKCertificate(sim, certDER); err != nil {
		return nil, err
	}
	eks, err = tpm.EKs()
	if err != nil || len(eks) == 0 || eks[0].Certificate == nil {
		return nil, fmt.Errorf("reading provisioned EK certificate: %v", err)
	}
	ekDER, err := x509.MarshalPKIXPublicKey(eks[0].Public)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(mfr.Certificate)

	f := &fixture{sim: sim, tpm: tpm, ek: eks[0], ekDER: ekDER, mfr: mfr, roots: roots}
	if f.golden, err = f.enroll(goattest.ECDSA); err != nil {
		return nil, fmt.Errorf("golden enrollment: %w", err)
	}
	return f, nil
}

// needTPM skips a test when there is no simulator.
func needTPM(tb testing.TB) *fixture {
	tb.Helper()
	if fx == nil {
		if errors.Is(fixtureErr, tpmsim.ErrCgoRequired) {
			tb.Skipf("no simulated TPM: %v", fixtureErr)
		}
		tb.Fatalf("no simulated TPM: %v", fixtureErr)
	}
	return fx
}

// evidence is what a device sends during one enrollment, plus the server's
// challenge secrets, all as bytes: verification needs no live TPM object.
type evidence struct {
	ak        goattest.AttestationParameters
	secret    []byte // server: activation secret
	activated []byte // device: what ActivateCredential recovered
	nonce     []byte
	quote     goattest.Quote // over quotedPCRs, SHA-256 bank
	pcrs      map[int][]byte // reported SHA-256 values of quotedPCRs
	key       goattest.CertificationParameters
	keyPub    crypto.PublicKey
	csr       []byte
}

// enroll runs the device side of a full enrollment against the server-side
// functions under test, the way the agent does, and closes every TPM object
// it creates.
func (f *fixture) enroll(alg goattest.Algorithm) (*evidence, error) {
	ak, err := f.tpm.NewAK(&goattest.AKConfig{Algorithm: alg})
	if err != nil {
		return nil, fmt.Errorf("NewAK: %w", err)
	}
	defer ak.Close(f.tpm)
	ev := &evidence{ak: ak.AttestationParameters()}

	// begin: the server makes an activation challenge for this AK.
	secret, ec, err := attest.NewActivationChallenge(rand.Reader, f.ek.Public, ev.ak)
	if err != nil {
		return nil, fmt.Errorf("NewActivationChallenge: %w", err)
	}
	ev.secret = secret
	if ev.activated, err = ak.ActivateCredential(f.tpm, *ec); err != nil {
		return nil, fmt.Errorf("ActivateCredential: %w", err)
	}

	// finish: quote over the server's nonce.
	ev.nonce = randomBytes(32)
	q, err := ak.QuotePCRs(f.tpm, ev.nonce, goattest.HashSHA256, quotedPCRs)
	if err != nil {
		return nil, fmt.Errorf("Quote: %w", err)
	}
	ev.quote = *q
	if ev.pcrs, err = f.readPCRs(quotedPCRs); err != nil {
		return nil, err
	}

	// finish: a TPM-resident key certified by the AK, and a CSR it signs.
	key, err := f.tpm.NewKey(ak, &goattest.KeyConfig{Algorithm: goattest.ECDSA, Size: 256})
	if err != nil {
		return nil, fmt.Errorf("NewKey: %w", err)
	}
	defer key.Close()
	ev.key = key.CertificationParameters()
	ev.keyPub = key.Public()
	priv, err := key.Private(key.Public())
	if err != nil {
		return nil, err
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("TPM key %T is not a crypto.Signer", priv)
	}
	ev.csr, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "device"},
	}, signer)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	return ev, nil
}

// readPCRs reads SHA-256 PCR values from the TPM.
func (f *fixture) readPCRs(indices []int) (map[int][]byte, error) {
	all, err := f.tpm.PCRs(goattest.HashSHA256)
	if err != nil {
		return nil, fmt.Errorf("reading PCRs: %w", err)
	}
	out := make(map[int][]byte, len(indices))
	for _, i := range indices {
		out[i] = bytes.Clone(all[i].Digest)
	}
	return out, nil
}

// withAK creates an AK, runs fn with it and closes it.
func (f *fixture) withAK(tb testing.TB, alg goattest.Algorithm, fn func(ak *goattest.AK)) {
	tb.Helper()
	ak, err := f.tpm.NewAK(&goattest.AKConfig{Algorithm: alg})
	if err != nil {
		tb.Fatalf("NewAK: %v", err)
	}
	defer func() {
		if err := ak.Close(f.tpm); err != nil {
			tb.Errorf("closing AK: %v", err)
		}
	}()
	fn(ak)
}

// certifiedKey creates a key certified by ak and returns its certification
// parameters and public key, closing the key.
func (f *fixture) certifiedKey(tb testing.TB, ak *goattest.AK) (goattest.CertificationParameters, crypto.PublicKey) {
	tb.Helper()
	key, err := f.tpm.NewKey(ak, &goattest.KeyConfig{Algorithm: goattest.ECDSA, Size: 256})
	if err != nil {
		tb.Fatalf("NewKey: %v", err)
	}
	defer key.Close()
	return key.CertificationParameters(), key.Public()
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// flip returns a copy of b with byte i (negative: from the end) inverted.
func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	if i < 0 {
		i += len(c)
	}
	c[i] ^= 0xff
	return c
}

func clonePCRs(m map[int][]byte) map[int][]byte {
	c := make(map[int][]byte, len(m))
	for i, d := range m {
		c[i] = bytes.Clone(d)
	}
	return c
}

// wantReason fails unless err is a *VerificationError with reason want.
func wantReason(tb testing.TB, err error, want attest.Reason) {
	tb.Helper()
	var ve *attest.VerificationError
	if !errors.As(err, &ve) {
		tb.Fatalf("error = %v (%T), want a *VerificationError with reason %q", err, err, want)
	}
	if ve.Reason != want {
		tb.Fatalf("reason = %q, want %q (error: %v)", ve.Reason, want, err)
	}
	tb.Logf("rejected: %v", err)
}
