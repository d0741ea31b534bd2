// Package ceiling measures the crypto ceiling of enrollment on this
// machine: the CPU cost of the cryptography one enrollment needs on the
// server (EK chain, MakeCredential, quote, key certification, CSR, leaf
// signing, bundle signing, a TLS 1.3 handshake), summed, and the
// enrollments per second that cost allows on every core. A server cannot
// beat it; how close it comes (enroll-bench's server CPU per enrollment
// against this sum) says how much of its cost is not cryptography.
//
// Device evidence is made once, before timing, by a real software TPM
// (loadgen.Prover). Each step is timed by the CPU time of the thread that
// runs it (CLOCK_THREAD_CPUTIME_ID on Linux), so other load on the machine
// does not inflate it; for the TLS handshake only the server side's thread
// is counted. It is a benchmark tool, never part of the server.
package ceiling

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/attest"
	"github.com/edgeenroll/edgeenroll/loadgen"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// Step is one measured operation.
type Step struct {
	Name string `json:"name"`
	// What it covers, and how its input was made.
	What string `json:"what"`
	// CPUMicros is CPU time per operation, in microseconds.
	CPUMicros float64 `json:"cpu_us"`
	Ops       int     `json:"ops"`
	// InSum marks the steps one enrollment pays today.
	InSum bool `json:"in_sum"`
}

// Result is a measured ceiling.
type Result struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	GoVersion string `json:"go_version"`
	Steps     []Step `json:"steps"`
	// SumMicros is the CPU time of one enrollment's cryptography.
	SumMicros float64 `json:"sum_us"`
	// PerSecond is the ceiling: CPUs × 10⁶ / SumMicros.
	PerSecond float64 `json:"ceiling_per_second"`
	// Against compares a run's figures with the ceiling, if given.
	Against *Comparison `json:"against,omitempty"`
}

// Comparison sets a run's figures against the ceiling.
type Comparison struct {
	// ObservedPerSecond is the run's enrollments/s; ObservedRatio is it
	// over the ceiling. On one machine the simulated devices share the
	// cores, so this understates the server.
	ObservedPerSecond float64 `json:"observed_per_second,omitempty"`
	ObservedRatio     float64 `json:"observed_ratio,omitempty"`
	// ServerCPUMsPerEnrollment is the server's CPU per enrollment from
	// /proc; ServerCapacityPerSecond = CPUs × 1000 / it, what the server
	// would sustain with every core to itself; CapacityRatio is that over
	// the ceiling (equivalently: the share of the server's CPU that is
	// the cryptography of the sum).
	ServerCPUMsPerEnrollment float64 `json:"server_cpu_ms_per_enrollment,omitempty"`
	ServerCapacityPerSecond  float64 `json:"server_capacity_per_second,omitempty"`
	CapacityRatio            float64 `json:"capacity_ratio,omitempty"`
}

// Compare fills r.Against from observed enrollments/s and the server's CPU
// ms per enrollment (either may be 0 when unknown).
func (r *Result) Compare(observedPerSecond, serverCPUMsPerEnrollment float64) {
	c := &Comparison{ObservedPerSecond: observedPerSecond, ServerCPUMsPerEnrollment: serverCPUMsPerEnrollment}
	if r.PerSecond > 0 && observedPerSecond > 0 {
		c.ObservedRatio = round(observedPerSecond/r.PerSecond, 4)
	}
	if serverCPUMsPerEnrollment > 0 {
		c.ServerCapacityPerSecond = round(float64(r.CPUs)*1000/serverCPUMsPerEnrollment, 1)
		if r.PerSecond > 0 {
			c.CapacityRatio = round(c.ServerCapacityPerSecond/r.PerSecond, 4)
		}
	}
	r.Against = c
}

// Fixture is one enrollment's evidence and the server-side material to
// verify and answer it, made once.
type Fixture struct {
	Steps []StepFunc
}

// StepFunc is a step to time: Run performs n operations and returns the CPU
// time they took on the server side.
type StepFunc struct {
	Name  string
	What  string
	InSum bool
	Run   func(n int) (time.Duration, error)
}

// bundleConfig is a typical config payload (testdata/demo-bundle.json).
var bundleConfig = json.RawMessage(`{"mqtt":{"broker":"mqtts://localhost:8883","client_id_prefix":"edge-"},"telemetry":{"interval_seconds":60},"log_level":"info"}`)

// NewFixture makes the evidence with a software TPM (the process's
// simulator, opened and closed here), a throwaway CA in dir (as enrolld
// creates it) and the TLS configurations.
func NewFixture(dir string) (*Fixture, error) {
	mfr, err := tpmsim.NewManufacturer("ceiling TPM manufacturer")
	if err != nil {
		return nil, err
	}
	mfrRoots := x509.NewCertPool()
	mfrRoots.AddCert(mfr.Certificate)
	ca, err := pki.LoadOrCreateCA(dir, nil)
	if err != nil {
		return nil, err
	}

	// The device: one identity and one answer, from a real TPM.
	p, err := loadgen.OpenProver(1, mfr)
	if err != nil {
		return nil, fmt.Errorf("the simulator makes the evidence: %w", err)
	}
	id, err := p.NewIdentity(0, loadgen.EKNonce([]byte("ceiling"), 0))
	if err != nil {
		p.Close()
		return nil, err
	}
	ekPub, err := attest.ParseEKPublic(id.EKPublic)
	if err != nil {
		p.Close()
		return nil, err
	}
	akParams := goattest.AttestationParameters{Public: id.AK.Public, CreateData: id.AK.CreateData,
		CreateAttestation: id.AK.CreateAttestation, CreateSignature: id.AK.CreateSignature}
	_, ec, err := attest.NewActivationChallenge(rand.Reader, ekPub, akParams)
	if err != nil {
		p.Close()
		return nil, err
	}
	br := &api.BeginResponse{SessionID: "0123456789abcdef0123456789abcdef", DeviceID: id.DeviceID,
		Challenge: api.EncryptedCredential{Credential: ec.Credential, Secret: ec.Secret},
		Nonce:     make([]byte, api.NonceSize), PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7}}
	rand.Read(br.Nonce)
	f, _, err := p.Answer(id, br)
	p.Close()
	if err != nil {
		return nil, err
	}
	pcrs := map[int][]byte{}
	for _, pcr := range f.PCRs {
		pcrs[pcr.Index] = pcr.Digest
	}
	certParams := goattest.CertificationParameters{Public: f.Key.Public, CreateAttestation: f.Key.CreateAttestation, CreateSignature: f.Key.CreateSignature}
	ak, err := attest.ParseAKPublic(id.AK.Public)
	if err != nil {
		return nil, err
	}
	keyPub, err := attest.VerifyKeyCertification(ak, certParams)
	if err != nil {
		return nil, err
	}

	// An RSA-2048 EK for comparison rows: a software key stands in (the
	// server's work depends only on the public key).
	rsaEK, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	rsaEKCert, err := mfr.IssueEKCertificate(&rsaEK.PublicKey)
	if err != nil {
		return nil, err
	}

	tlsSteps, err := tlsSteps(ca)
	if err != nil {
		return nil, err
	}

	now := time.Now()
	steps := []StepFunc{
		loop("ek-chain", "attest.VerifyEKCertificate: ECC P-256 EK certificate from a P-256 manufacturer root", true, func() error {
			_, err := attest.VerifyEKCertificate(id.EKCertificate, ekPub, mfrRoots, nil, now)
			return err
		}),
		loop("make-credential", "attest.NewActivationChallenge: AK checks and MakeCredential to the ECC EK (ECDH)", true, func() error {
			_, _, err := attest.NewActivationChallenge(rand.Reader, ekPub, akParams)
			return err
		}),
		loop("quote", "attest.ParseAKPublic + VerifyQuote: ECDSA P-256 AK, 8 SHA-256 PCRs", true, func() error {
			ak, err := attest.ParseAKPublic(id.AK.Public)
			if err != nil {
				return err
			}
			_, err = attest.VerifyQuote(ak, f.Quote.Quote, f.Quote.Signature, pcrs, br.Nonce, br.PCRs)
			return err
		}),
		loop("key-certification", "attest.VerifyKeyCertification: TPM key certified by the AK", true, func() error {
			_, err := attest.VerifyKeyCertification(ak, certParams)
			return err
		}),
		loop("csr", "attest.VerifyCSR: CSR signed by the TPM key", true, func() error {
			_, err := attest.VerifyCSR(f.CSR, keyPub)
			return err
		}),
		loop("issue", "pki CA.IssueDevice: P-256 leaf signed by the P-256 intermediate", true, func() error {
			_, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: id.DeviceID, PublicKey: keyPub})
			return err
		}),
		loop("bundle", "pki CA.SignBundle: ES256 compact JWS of a small config", true, func() error {
			_, err := ca.SignBundle(pki.Bundle{DeviceID: id.DeviceID, Version: 1, IssuedAt: now, ExpiresAt: now.Add(24 * time.Hour), Config: bundleConfig})
			return err
		}),
		loop("ek-chain/rsa-ek", "attest.VerifyEKCertificate for an RSA-2048 EK (software stand-in key), not in the sum", false, func() error {
			_, err := attest.VerifyEKCertificate(rsaEKCert, &rsaEK.PublicKey, mfrRoots, nil, now)
			return err
		}),
		loop("make-credential/rsa-ek", "attest.NewActivationChallenge to an RSA-2048 EK (RSA-OAEP), not in the sum", false, func() error {
			_, _, err := attest.NewActivationChallenge(rand.Reader, &rsaEK.PublicKey, akParams)
			return err
		}),
	}
	return &Fixture{Steps: append(steps, tlsSteps...)}, nil
}

// loop times n calls of op on one locked thread.
func loop(name, what string, inSum bool, op func() error) StepFunc {
	return StepFunc{Name: name, What: what, InSum: inSum, Run: func(n int) (time.Duration, error) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		start := threadCPU()
		for range n {
			if err := op(); err != nil {
				return 0, err
			}
		}
		return threadCPU() - start, nil
	}}
}

// kex is a TLS key exchange choice; nil preferences are Go's default.
type kex struct {
	name   string
	curves []tls.CurveID
}

var kexes = []kex{
	{"default", nil},
	{"x25519", []tls.CurveID{tls.X25519}},
	{"p256", []tls.CurveID{tls.CurveP256}},
}

// tlsSteps are full TLS 1.3 handshakes (no resumption) over net.Pipe with
// enrolld's server configuration: P-256 server certificate from the CA,
// client certificates verified if given. "server-auth" is what begin and
// finish pay today (devices enroll without a client certificate);
// "mutual" adds a device certificate, as an mTLS call does.
func tlsSteps(ca *pki.CA) ([]StepFunc, error) {
	serverCert, err := ca.IssueServer([]string{"localhost"}, time.Hour)
	if err != nil {
		return nil, err
	}
	devKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	devID := "00000000000000000000000000000000000000000000000000000000000000aa"
	issued, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: devID, PublicKey: &devKey.PublicKey})
	if err != nil {
		return nil, err
	}
	clientCert := tls.Certificate{PrivateKey: devKey, Leaf: issued.Leaf}
	for _, c := range issued.Chain {
		clientCert.Certificate = append(clientCert.Certificate, c.Raw)
	}
	var steps []StepFunc
	for _, mutual := range []bool{false, true} {
		for _, k := range kexes {
			server := &tls.Config{
				MinVersion:       tls.VersionTLS13,
				Certificates:     []tls.Certificate{*serverCert},
				ClientAuth:       tls.VerifyClientCertIfGiven,
				ClientCAs:        ca.RootPool(),
				CurvePreferences: k.curves,
			}
			client := &tls.Config{
				MinVersion:       tls.VersionTLS13,
				RootCAs:          ca.RootPool(),
				ServerName:       "localhost",
				CurvePreferences: k.curves,
			}
			name, what := "tls-server-auth/"+k.name, "TLS 1.3 full handshake, server side, no client certificate (begin+finish on one connection)"
			if mutual {
				client.Certificates = []tls.Certificate{clientCert}
				name, what = "tls-mutual/"+k.name, "TLS 1.3 full handshake, server side, verifying a device certificate (mTLS)"
			}
			what += ", key exchange " + k.name
			if k.curves == nil {
				what += " (Go's default: X25519MLKEM768)"
			}
			steps = append(steps, StepFunc{Name: name, What: what, InSum: !mutual && k.curves == nil,
				Run: func(n int) (time.Duration, error) { return handshakes(n, server, client) }})
		}
	}
	return steps, nil
}

// handshakeTimeout bounds one handshake over the pipe.
const handshakeTimeout = 10 * time.Second

// handshakes runs n handshakes and returns the server side's CPU time: the
// server runs on its own locked thread, and only that thread is counted.
func handshakes(n int, server, client *tls.Config) (time.Duration, error) {
	var total time.Duration
	for range n {
		cc, sc := net.Pipe()
		// Bound a handshake that cannot complete.
		deadline := time.Now().Add(handshakeTimeout)
		cc.SetDeadline(deadline)
		sc.SetDeadline(deadline)
		srvDone := make(chan error, 1)
		var cpu time.Duration
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			start := threadCPU()
			conn := tls.Server(sc, server)
			err := conn.Handshake()
			cpu = threadCPU() - start
			conn.Close()
			srvDone <- err
		}()
		conn := tls.Client(cc, client)
		err := conn.Handshake()
		if err == nil {
			// Read the session tickets and close_notify, so the
			// server's writes complete.
			io.Copy(io.Discard, conn)
		}
		cc.Close()
		if serr := <-srvDone; err == nil {
			err = serr
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("handshake: %w", err)
		}
		total += cpu
	}
	return total, nil
}

// Options configure Measure.
type Options struct {
	// Duration is the minimum CPU time per step; 0 means 500 ms.
	Duration time.Duration
	// Dir is where the throwaway CA goes; "" means a temporary directory.
	Dir string
	// Progress, if set, gets a line per step.
	Progress io.Writer
}

// Measure makes a Fixture and times every step.
func Measure(ctx context.Context, opts Options) (*Result, error) {
	if opts.Duration <= 0 {
		opts.Duration = 500 * time.Millisecond
	}
	dir := opts.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "enroll-bench-ceiling-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	fx, err := NewFixture(dir)
	if err != nil {
		return nil, err
	}
	r := &Result{CPUs: runtime.NumCPU(), CPUModel: loadgen.CPUModel(), GoVersion: runtime.Version()}
	for _, s := range fx.Steps {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		perOp, ops, err := timeStep(s, opts.Duration)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Name, err)
		}
		st := Step{Name: s.Name, What: s.What, CPUMicros: round(float64(perOp)/1e3, 2), Ops: ops, InSum: s.InSum}
		if st.InSum {
			r.SumMicros += float64(perOp) / 1e3
		}
		r.Steps = append(r.Steps, st)
		if opts.Progress != nil {
			fmt.Fprintf(opts.Progress, "ceiling: %-28s %9.1f µs\n", st.Name, st.CPUMicros)
		}
	}
	r.SumMicros = round(r.SumMicros, 2)
	if r.SumMicros > 0 {
		r.PerSecond = round(float64(r.CPUs)*1e6/r.SumMicros, 1)
	}
	return r, nil
}

// maxOps bounds any step's loop.
const maxOps = 1 << 20

// timeStep warms s up, then grows the batch until it has used at least d
// of CPU, and returns the CPU time per operation of the last batch.
func timeStep(s StepFunc, d time.Duration) (time.Duration, int, error) {
	if _, err := s.Run(3); err != nil {
		return 0, 0, err
	}
	n := 10
	for {
		cpu, err := s.Run(n)
		if err != nil {
			return 0, 0, err
		}
		if cpu >= d || n >= maxOps {
			return cpu / time.Duration(n), n, nil
		}
		// Aim 20 % past d, at most 100× the last batch.
		next := int(float64(n) * 1.2 * float64(d) / float64(max(cpu, time.Microsecond)))
		n = min(max(next, n+1), 100*n, maxOps)
	}
}

// WriteText prints r for a person.
func (r *Result) WriteText(w io.Writer) {
	fmt.Fprintf(w, "crypto ceiling on %d CPUs (%s), %s: server-side CPU per operation, evidence made once by a software TPM before timing\n",
		r.CPUs, r.CPUModel, r.GoVersion)
	fmt.Fprintf(w, "  %-28s %10s  %s\n", "step", "µs/op", "in sum")
	for _, s := range r.Steps {
		in := ""
		if s.InSum {
			in = "yes"
		}
		fmt.Fprintf(w, "  %-28s %10.1f  %s\n", s.Name, s.CPUMicros, in)
	}
	fmt.Fprintf(w, "  %-28s %10.1f\n", "sum per enrollment", r.SumMicros)
	fmt.Fprintf(w, "ceiling: %.0f enrollments/s on %d cores\n", r.PerSecond, r.CPUs)
	if c := r.Against; c != nil {
		if c.ObservedPerSecond > 0 {
			fmt.Fprintf(w, "observed: %.1f enrollments/s = %.1f%% of the ceiling (simulated devices share the cores)\n", c.ObservedPerSecond, 100*c.ObservedRatio)
		}
		if c.ServerCPUMsPerEnrollment > 0 {
			fmt.Fprintf(w, "server: %.3f ms CPU per enrollment → %.0f enrollments/s on %d cores = %.1f%% of the ceiling\n",
				c.ServerCPUMsPerEnrollment, c.ServerCapacityPerSecond, r.CPUs, 100*c.CapacityRatio)
		}
	}
}

func round(f float64, places int) float64 {
	p := 1.0
	for range places {
		p *= 10
	}
	return float64(int64(f*p+0.5)) / p
}
