package loadgen

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
)

// StepCAConfig configures RunStepCA: step-ca's plain certificate signing
// (POST /1.0/sign with a JWK provisioner's one-time token, no attestation)
// under the same load generator as Run.
type StepCAConfig struct {
	// Binary is step-ca; "" builds Version with BuildStepCA into CacheDir.
	Binary   string
	Version  string
	CacheDir string
	// DB is StepCADBBadger (default) or StepCADBNone.
	DB string
	// Dir holds the CA's files; "" is a temporary directory, removed
	// afterwards.
	Dir string
	// Rounds is the number of timed runs (fresh devices each); 0 means 1.
	Rounds int
	Load   StepCALoad
	// Progress receives build and progress lines.
	Progress io.Writer
}

// StepCALoad is one timed run's load, with Run's semantics: Devices
// simulated devices, Concurrency in flight, each with its own TLS
// connection; a device's retries reuse it.
type StepCALoad struct {
	Devices     int
	Concurrency int // 0 means 64, at most Devices
	Ramp        time.Duration
	Retry       RetryPolicy
	// PhaseTimeout bounds the run (0: 10 minutes), RequestTimeout each
	// request (0: 30 s).
	PhaseTimeout   time.Duration
	RequestTimeout time.Duration
	// Verify checks each answer as a relying party would: the chain to
	// the root for client authentication, the key and the device name.
	Verify        bool
	Progress      io.Writer
	ProgressEvery time.Duration
}

func (l *StepCALoad) defaults() error {
	if l.Devices <= 0 {
		return errors.New("loadgen: Devices must be positive")
	}
	// Run's defaults.
	phaseDefaults(&l.Concurrency, l.Devices, &l.Retry, &l.PhaseTimeout, &l.RequestTimeout, &l.ProgressEvery)
	return nil
}

// StepCAResult is RunStepCA's outcome.
type StepCAResult struct {
	// Skipped, if set, is why step-ca was not measured (it could not be
	// built); nothing else is then set.
	Skipped string       `json:"skipped,omitempty"`
	Build   *StepCABuild `json:"build,omitempty"`
	CA      *StepCAInfo  `json:"ca,omitempty"`
	Runs    []*StepCARun `json:"runs,omitempty"`
	// Medians over the runs.
	SignsPerSecond     float64 `json:"signs_per_second"`
	ServerCPUMsPerSign float64 `json:"server_cpu_ms_per_sign"`
	SignP99Ms          float64 `json:"sign_p99_ms"`
	// ClientCPUMsPerSign is the load generator's CPU per sign (TLS,
	// JSON, verification; keys and tokens are made before timing).
	ClientCPUMsPerSign float64 `json:"client_cpu_ms_per_sign"`
	Failed             int     `json:"failed"` // devices that failed, all runs
}

// StepCARun is one timed run against step-ca.
type StepCARun struct {
	Setup StepCASetup `json:"setup"`
	// Prepare is the devices' key pairs, CSRs and first tokens, made
	// before timing so the load generator's cost does not throttle it.
	Prepare StepCAPrepare `json:"prepare"`
	Phase   StepCAPhase   `json:"phase"`
	// SignsPerSecond is Phase.PerSecond; ServerCPUMsPerSign is step-ca's
	// CPU time per successful sign.
	SignsPerSecond     float64 `json:"signs_per_second"`
	ServerCPUMsPerSign float64 `json:"server_cpu_ms_per_sign"`
}

// StepCASetup says what one run measured and on what.
type StepCASetup struct {
	Server      string  `json:"server"`
	Devices     int     `json:"devices"`
	Concurrency int     `json:"concurrency"`
	RampSeconds float64 `json:"ramp_seconds"`
	Verify      bool    `json:"verify"`
	CPUs        int     `json:"cpus"`
	CPUModel    string  `json:"cpu_model,omitempty"`
	GoVersion   string  `json:"go_version"`
	LoadBefore  float64 `json:"load_before,omitempty"`
}

// StepCAPrepare is the untimed preparation of a run.
type StepCAPrepare struct {
	Count     int     `json:"count"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
}

// StepCAPhase is one pass over every device: each asks step-ca to sign
// its CSR once (retrying as Run's devices do).
type StepCAPhase struct {
	Devices   int     `json:"devices"`
	Succeeded int     `json:"succeeded"`
	Failed    int     `json:"failed"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
	// Sign is one successful attempt: TLS handshake (on a device's first
	// attempt), POST /1.0/sign and reading the answer, in milliseconds;
	// Verify is the client-side check of the answer after it.
	Sign        Summary `json:"sign"`
	Verify      Summary `json:"verify"`
	TimeToReady Summary `json:"time_to_ready"`
	StartDelay  Summary `json:"start_delay"`
	// Tokens counts the tokens minted during timing, for retries (each
	// attempt needs a fresh one: the first may have been spent).
	Tokens  int         `json:"tokens_minted_in_phase"`
	Retries RetryReport `json:"retries"`
	// Errors counts failed attempts by HTTP status ("401", "500") or
	// class: network, timeout, verify (a bad answer), local.
	Errors     map[string]int `json:"errors"`
	Server     *ProcessReport `json:"server,omitempty"`
	ClientSide ProcessReport  `json:"client_side"`
	// MachineBusy is the fraction of all cores' time that was busy.
	MachineBusy float64 `json:"machine_busy"`
}

// RunStepCA builds (or takes) step-ca, starts it and runs cfg.Rounds
// timed runs. If step-ca cannot be built it returns a result with
// Skipped set and no error.
func RunStepCA(ctx context.Context, cfg StepCAConfig) (*StepCAResult, error) {
	if err := cfg.Load.defaults(); err != nil {
		return nil, err
	}
	res, err := resolveStepCA(ctx, &cfg)
	if err != nil || res.Skipped != "" {
		return res, err
	}
	ca, err := StartStepCA(ctx, res.Build.Path, cfg.Dir, cfg.DB)
	if err != nil {
		return nil, err
	}
	defer ca.Close()
	res.CA = &ca.Info
	for r := range max(cfg.Rounds, 1) {
		fmt.Fprintf(stepCAProgress(cfg.Progress), "round %d/%d: step-ca %s\n", r+1, max(cfg.Rounds, 1), ca.Info.URL)
		run, err := ca.Run(ctx, cfg.Load)
		if err != nil {
			return nil, err
		}
		res.Runs = append(res.Runs, run)
	}
	res.summarize()
	return res, nil
}

// resolveStepCA finds or builds the binary; a failed build is a skip.
func resolveStepCA(ctx context.Context, cfg *StepCAConfig) (*StepCAResult, error) {
	if cfg.Binary != "" {
		return &StepCAResult{Build: &StepCABuild{Path: cfg.Binary, Version: cfg.Version, How: "given"}}, nil
	}
	b, err := BuildStepCA(ctx, cfg.Version, cfg.CacheDir, stepCAProgress(cfg.Progress))
	if err != nil {
		if errors.Is(err, ErrStepCABuild) && ctx.Err() == nil {
			return &StepCAResult{Skipped: err.Error()}, nil
		}
		return nil, err
	}
	return &StepCAResult{Build: b}, nil
}

func stepCAProgress(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func (res *StepCAResult) summarize() {
	var rate, cpu, p99, client []float64
	res.Failed = 0
	for _, r := range res.Runs {
		rate = append(rate, r.SignsPerSecond)
		cpu = append(cpu, r.ServerCPUMsPerSign)
		client = append(client, r.Phase.ClientSide.CPUMsPerOp)
		p99 = append(p99, r.Phase.Sign.P99)
		res.Failed += r.Phase.Failed
	}
	res.SignsPerSecond, res.ServerCPUMsPerSign, res.SignP99Ms = median(rate), median(cpu), median(p99)
	res.ClientCPUMsPerSign = median(client)
}

// stepCADevice is one simulated device of a step-ca run.
type stepCADevice struct {
	id     string
	pub    crypto.PublicKey
	csrDER []byte
	csrPEM string
	body   []byte // the first attempt's request, token included
}

// stepCAResult is what one device did.
type stepCAResult struct {
	ok                 bool
	attempts           int
	tokens             int
	sign, verify       time.Duration
	scheduled, started time.Duration
	ready              time.Duration
	errors             []string
}

// Run makes load.Devices fresh devices (key pair, CSR, token), then, timed,
// has each ask step-ca to sign its CSR, load.Concurrency at a time.
func (c *StepCA) Run(ctx context.Context, load StepCALoad) (*StepCARun, error) {
	if err := load.defaults(); err != nil {
		return nil, err
	}
	if err := c.alive(); err != nil {
		return nil, err
	}
	n := load.Devices
	run := &StepCARun{Setup: StepCASetup{
		Server: c.Info.URL, Devices: n, Concurrency: load.Concurrency, RampSeconds: load.Ramp.Seconds(),
		Verify: load.Verify, CPUs: runtime.NumCPU(), CPUModel: CPUModel(), GoVersion: runtime.Version(),
	}}

	// Before timing: keys, CSRs, tokens and request bodies. A token
	// lives as long as the phase may, plus step's usual five minutes.
	lifetime := load.PhaseTimeout + 5*time.Minute
	start := time.Now()
	devs := make([]stepCADevice, n)
	if err := stepCAParallel(ctx, n, runtime.NumCPU(), func(i int) error {
		return c.newDevice(&devs[i], lifetime)
	}); err != nil {
		return nil, fmt.Errorf("preparing step-ca requests: %w", err)
	}
	elapsed := time.Since(start)
	run.Prepare = StepCAPrepare{Count: n, Seconds: round3(elapsed.Seconds()), PerSecond: round3(float64(n) / elapsed.Seconds())}
	run.Setup.LoadBefore = loadAvg()

	p, err := c.runPhase(ctx, &load, devs, lifetime)
	if err != nil {
		return nil, err
	}
	run.Phase = *p
	run.SignsPerSecond = p.PerSecond
	if p.Server != nil {
		run.ServerCPUMsPerSign = p.Server.CPUMsPerOp
	}
	return run, c.alive()
}

// newDevice makes a device: a P-256 key, its ID (the SHA-256 of its public
// key, in the form of an edgeenroll device ID), a CSR with the ID as
// common name, and a token for it.
func (c *StepCA) newDevice(d *stepCADevice, lifetime time.Duration) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	sum := sha256.Sum256(der)
	d.id, d.pub = hex.EncodeToString(sum[:]), key.Public()
	if d.csrDER, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: d.id}}, key); err != nil {
		return err
	}
	d.csrPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: d.csrDER}))
	d.body, err = c.signBody(d, time.Now(), lifetime)
	return err
}

// signBody is a POST /1.0/sign request with a fresh token.
func (c *StepCA) signBody(d *stepCADevice, now time.Time, lifetime time.Duration) ([]byte, error) {
	tok, err := c.token(d.id, d.csrDER, now, lifetime)
	if err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		CSR string `json:"csr"`
		OTT string `json:"ott"`
	}{d.csrPEM, tok})
}

// stepCAParallel runs fn(0..n-1) on workers goroutines, stopping at the first
// error.
func stepCAParallel(ctx context.Context, n, workers int, fn func(int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// stepCASample is a point-in-time reading of the processes involved.
type stepCASample struct {
	server      time.Duration
	serverOK    bool
	client      time.Duration
	busy, total time.Duration
}

func (c *StepCA) sample() stepCASample {
	var s stepCASample
	var err error
	s.server, err = ProcessCPU(c.Info.PID)
	s.serverOK = err == nil
	s.client, _ = ProcessCPU(os.Getpid())
	s.busy, s.total, _ = MachineCPU()
	return s
}

func (c *StepCA) runPhase(ctx context.Context, sl *StepCALoad, devs []stepCADevice, lifetime time.Duration) (*StepCAPhase, error) {
	ctx, cancel := context.WithTimeout(ctx, sl.PhaseTimeout)
	defer cancel()
	n := len(devs)
	results := make([]stepCAResult, n)

	rss := sampleRSS([]int{c.Info.PID})
	before := c.sample()
	l := drivePlan{N: n, Concurrency: sl.Concurrency, Ramp: sl.Ramp, Progress: sl.Progress, ProgressEvery: sl.ProgressEvery, Label: "step-ca sign", Verb: "signed"}
	elapsed := l.drive(ctx, func(i int, start time.Time, s schedule) bool {
		r := &results[i]
		r.scheduled, r.started = s.scheduled, s.started
		c.runDevice(ctx, sl, &devs[i], r, start, lifetime)
		return r.ok
	})
	after := c.sample()
	rssMax := rss.Stop()

	p := &StepCAPhase{Devices: n, Seconds: round3(elapsed.Seconds()), Errors: map[string]int{},
		Retries: RetryReport{Histogram: map[int]int{}}}
	var sign, verify, ttr, startDelay []time.Duration
	for i := range results {
		r := &results[i]
		startDelay = append(startDelay, max(r.started-r.scheduled, 0))
		p.Tokens += r.tokens
		for _, code := range r.errors {
			p.Errors[code]++
		}
		p.Retries.add(r.attempts)
		if !r.ok {
			p.Failed++
			continue
		}
		p.Succeeded++
		sign = append(sign, r.sign)
		if sl.Verify {
			verify = append(verify, r.verify)
		}
		ttr = append(ttr, r.ready-r.scheduled)
	}
	p.PerSecond = round3(float64(p.Succeeded) / elapsed.Seconds())
	p.Sign, p.Verify, p.TimeToReady, p.StartDelay = Summarize(sign), Summarize(verify), Summarize(ttr), Summarize(startDelay)

	p.ClientSide = cpuReport([]int{os.Getpid()}, after.client-before.client, p.Succeeded)
	if dt := after.total - before.total; dt > 0 {
		p.MachineBusy = round3(float64(after.busy-before.busy) / float64(dt))
	}
	if before.serverOK && after.serverOK {
		sp := cpuReport([]int{c.Info.PID}, after.server-before.server, p.Succeeded)
		sp.RSSMaxBytes = rssMax
		sp.RSSEndBytes, sp.PeakRSSBytes, _ = ProcessMemory(c.Info.PID)
		sp.RSSMaxBytes = max(sp.RSSMaxBytes, sp.RSSEndBytes)
		p.Server = &sp
	}
	return p, nil
}

// stepCAError is a failed attempt with its error class.
type stepCAError struct {
	code       string
	retry      bool
	retryAfter time.Duration
	err        error
}

func (e *stepCAError) Error() string { return e.code + ": " + e.err.Error() }

// runDevice has one device ask for its certificate over its own TLS
// connection (as device.NewHTTPSTransport: TLS 1.3, HTTP/2 if offered),
// retrying transient failures as Run's devices do, each retry with a
// fresh token.
func (c *StepCA) runDevice(ctx context.Context, load *StepCALoad, d *stepCADevice, r *stepCAResult, phaseStart time.Time, lifetime time.Duration) {
	tr := &http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: c.roots, MinVersion: tls.VersionTLS13},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer tr.CloseIdleConnections()
	body := d.body
	for attempt := 1; attempt <= load.Retry.Attempts && ctx.Err() == nil; attempt++ {
		r.attempts = attempt
		if body == nil {
			b, err := c.signBody(d, time.Now(), lifetime)
			if err != nil {
				r.errors = append(r.errors, CodeLocal)
				return
			}
			body = b
			r.tokens++
		}
		t0 := time.Now()
		data, err := c.sign(ctx, client, load.RequestTimeout, body)
		body = nil
		if err == nil {
			r.sign = time.Since(t0)
			if load.Verify {
				t1 := time.Now()
				if verr := c.verify(d, data); verr != nil {
					err = &stepCAError{code: CodeVerify, err: verr}
				}
				r.verify = time.Since(t1)
			}
		}
		if err == nil {
			r.ok = true
			r.ready = time.Since(phaseStart)
			return
		}
		var se *stepCAError
		if !errors.As(err, &se) {
			se = &stepCAError{code: CodeLocal, err: err}
		}
		r.errors = append(r.errors, se.code)
		if !se.retry || attempt == load.Retry.Attempts {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(load.Retry.backoff(attempt, se.retryAfter)):
		}
	}
	if !r.ok && ctx.Err() != nil && (len(r.errors) == 0 || r.errors[len(r.errors)-1] != CodeTimeout) {
		r.errors = append(r.errors, CodeTimeout)
	}
}

// maxStepCAResponse bounds a sign answer.
const maxStepCAResponse = 1 << 20

// sign posts one request and returns the 2xx answer's body.
func (c *StepCA) sign(ctx context.Context, client *http.Client, timeout time.Duration, body []byte) ([]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, c.audience, bytes.NewReader(body))
	if err != nil {
		return nil, &stepCAError{code: CodeLocal, err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		if rctx.Err() != nil && ctx.Err() == nil {
			return nil, &stepCAError{code: CodeTimeout, retry: true, err: err}
		}
		if ctx.Err() != nil {
			return nil, &stepCAError{code: CodeTimeout, err: err}
		}
		return nil, &stepCAError{code: CodeNetwork, retry: true, err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxStepCAResponse+1))
	if err != nil {
		return nil, &stepCAError{code: CodeNetwork, retry: true, err: err}
	}
	if len(data) > maxStepCAResponse {
		return nil, &stepCAError{code: CodeVerify, err: errors.New("answer too large")}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &stepCAError{code: strconv.Itoa(resp.StatusCode), err: fmt.Errorf("step-ca answered %s: %.200s", resp.Status, data)}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			e.retry = true
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
				e.retryAfter = time.Duration(s) * time.Second
			}
		}
		return nil, e
	}
	return data, nil
}

// verify checks a sign answer as a relying party would: the leaf carries
// the device's key, chains to the root for client authentication and
// names the device as edgeenroll's certificates do.
func (c *StepCA) verify(d *stepCADevice, data []byte) error {
	var sr struct {
		Leaf      string   `json:"crt"`
		Issuer    string   `json:"ca"`
		CertChain []string `json:"certChain"`
	}
	if err := json.Unmarshal(data, &sr); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	pems := sr.CertChain
	if len(pems) == 0 {
		pems = []string{sr.Leaf, sr.Issuer}
	}
	var chain []*x509.Certificate
	for _, s := range pems {
		b, _ := pem.Decode([]byte(s))
		if b == nil || b.Type != "CERTIFICATE" {
			return errors.New("answer holds no PEM certificate")
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return err
		}
		chain = append(chain, cert)
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, cert := range chain[1:] {
		inter.AddCert(cert)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return err
	}
	if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(d.pub) {
		return errors.New("certificate is for another key")
	}
	id, err := pki.DeviceIDFromCertificate(leaf, pki.DefaultTrustDomain)
	if err != nil {
		return err
	}
	if id != d.id {
		return fmt.Errorf("certificate names device %s, want %s", id, d.id)
	}
	return nil
}

// WriteText prints r for a person.
func (res *StepCAResult) WriteText(w io.Writer) {
	if res.Skipped != "" {
		fmt.Fprintf(w, "step-ca comparison skipped: %s\n", res.Skipped)
		return
	}
	res.writeCA(w)
	for i, run := range res.Runs {
		fmt.Fprintf(w, "\nrun %d/%d: ", i+1, len(res.Runs))
		run.WriteText(w)
	}
	if len(res.Runs) > 1 {
		fmt.Fprintf(w, "\nmedians over %d runs: %.1f signs/s, server CPU %.3f ms per sign, sign p99 %.1f ms, %d failed\n",
			len(res.Runs), res.SignsPerSecond, res.ServerCPUMsPerSign, res.SignP99Ms, res.Failed)
	}
}

func (res *StepCAResult) writeCA(w io.Writer) {
	if b := res.Build; b != nil {
		fmt.Fprintf(w, "step-ca binary %s (%s", b.Path, b.How)
		if b.How == "built" {
			fmt.Fprintf(w, " in %.0fs: %s", b.Seconds, b.Command)
		}
		fmt.Fprintln(w, ")")
	}
	if ca := res.CA; ca != nil {
		fmt.Fprintf(w, "step-ca %s at %s (pid %d, %s)\n  db: %s\n  provisioner: %s\n",
			ca.Version, ca.URL, ca.PID, ca.TLS, ca.DB, ca.Provisioner)
	}
}

// WriteText prints one run.
func (run *StepCARun) WriteText(w io.Writer) {
	s, p := run.Setup, run.Phase
	fmt.Fprintf(w, "%d devices, concurrency %d, ramp %.1fs, verify %v; %d CPUs (%s), %s, load before %.2f\n",
		s.Devices, s.Concurrency, s.RampSeconds, s.Verify, s.CPUs, s.CPUModel, s.GoVersion, s.LoadBefore)
	fmt.Fprintf(w, "prepared %d key pairs, CSRs and tokens in %.2fs, before timing\n", run.Prepare.Count, run.Prepare.Seconds)
	fmt.Fprintf(w, "sign: %d/%d succeeded, %d failed in %.2fs: %.1f/s observed\n", p.Succeeded, p.Devices, p.Failed, p.Seconds, p.PerSecond)
	if p.Server != nil {
		fmt.Fprintf(w, "  step-ca CPU %.2fs = %.3f ms per sign (capacity on %d cores: %.0f/s), RSS max %s, peak %s\n",
			p.Server.CPUSeconds, p.Server.CPUMsPerOp, s.CPUs, p.Server.CapacityPerSecond, mib(p.Server.RSSMaxBytes), mib(p.Server.PeakRSSBytes))
	}
	fmt.Fprintf(w, "  client side CPU %.2fs = %.3f ms per sign; machine busy %.0f%%\n", p.ClientSide.CPUSeconds, p.ClientSide.CPUMsPerOp, 100*p.MachineBusy)
	fmt.Fprintf(w, "  %-22s %8s %8s %8s %8s %8s\n", "latency (ms)", "p50", "p95", "p99", "max", "count")
	for _, row := range []struct {
		name string
		s    Summary
	}{{"sign", p.Sign}, {"verify", p.Verify}, {"start delay", p.StartDelay}, {"time to ready", p.TimeToReady}} {
		fmt.Fprintf(w, "  %-22s %8.1f %8.1f %8.1f %8.1f %8d\n", row.name, row.s.P50, row.s.P95, row.s.P99, row.s.Max, row.s.Count)
	}
	fmt.Fprintf(w, "  retries: %d in total, %d devices retried, at most %d\n", p.Retries.Total, p.Retries.DevicesRetried, p.Retries.Max)
	if len(p.Errors) > 0 {
		fmt.Fprint(w, "  errors:")
		for _, code := range slices.Sorted(maps.Keys(p.Errors)) {
			fmt.Fprintf(w, " %s=%d", code, p.Errors[code])
		}
		fmt.Fprintln(w)
	}
}
