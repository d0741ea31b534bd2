package loadgen

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/sealing"
)

// Phase names.
const (
	PhaseEnroll = "enroll"
	PhaseRenew  = "renew"
)

// Error classes of failed attempts that are not protocol codes.
const (
	CodeNetwork = "network" // no answer from the server
	CodeLocal   = "local"   // the device side could not build a request
	CodeTPM     = "tpm"     // the simulated TPM failed
	CodeVerify  = "verify"  // the server's answer did not verify
	CodeTimeout = "timeout" // a request, or the phase, ran out of time
)

// RetryPolicy bounds a device's attempts, as device.RetryPolicy does the
// agent's: full jitter over an exponentially growing cap, never less than
// the server's Retry-After.
type RetryPolicy struct {
	Attempts int           // total attempts per device and phase; 0 means 8
	Base     time.Duration // first backoff cap; 0 means 100 ms
	Max      time.Duration // backoff cap; 0 means 5 s
}

func (p RetryPolicy) backoff(n int, retryAfter time.Duration) time.Duration {
	ceiling := p.Max
	if n < 32 && p.Base<<(n-1) < p.Max && p.Base<<(n-1) > 0 {
		ceiling = p.Base << (n - 1)
	}
	return max(time.Duration(mrand.Int64N(int64(ceiling)+1)), retryAfter)
}

// Config configures Run.
type Config struct {
	// Identities are the devices, made before timing (CreateIdentities).
	Identities []*Identity
	// Prover is the devices' TPM side.
	Prover Answerer
	// Transport opens a device's connection to the server for one phase:
	// begin and finish (and retries) share it, as on a device. The seam
	// for other transports (MQTT).
	Transport func(id *Identity) (device.Transport, error)
	// TransportName names it in the report ("https").
	TransportName string
	// ServerName names the server in the report.
	ServerName string
	// Roots is the enrollment root; with Verify, each answer is checked
	// as the agent checks it (chain, device ID, TPM key, bundle).
	Roots       *x509.CertPool
	TrustDomain string
	Verify      bool
	// Concurrency bounds the devices in flight; 0 means 64.
	Concurrency int
	// Ramp spreads device starts evenly over this time (0: all at once).
	Ramp time.Duration
	// Renew adds a second phase: every device attests again.
	Renew bool
	// Certificates, if set, receives each device's certificate when it
	// enrolls (see Certificates.For): transports built with it present the
	// certificate on the renew phase's calls, as an agent does.
	Certificates *Certificates
	Retry        RetryPolicy
	// PhaseTimeout bounds each phase; 0 means 10 minutes.
	PhaseTimeout time.Duration
	// RequestTimeout bounds each request; 0 means 30 s.
	RequestTimeout time.Duration
	// ServerPID, if non-zero, is the server process whose CPU and memory
	// are reported.
	ServerPID int
	// MoreServerPIDs are the other servers of a cluster (enrolld sharing
	// a store): their CPU and memory count with ServerPID's.
	MoreServerPIDs []int
	// StorePIDs are the shared store's processes (an etcd cluster), whose
	// CPU per enrollment is reported apart (PhaseReport.Store).
	StorePIDs []int
	// DevicePIDs are processes doing device-side work besides this one
	// (the pool's workers), for CPU accounting.
	DevicePIDs []int
	// Progress, if set, receives a line every ProgressEvery (default 2 s).
	Progress      io.Writer
	ProgressEvery time.Duration
}

func (c *Config) defaults() error {
	if len(c.Identities) == 0 {
		return errors.New("loadgen: no identities")
	}
	if c.Prover == nil || c.Transport == nil {
		return errors.New("loadgen: Prover and Transport are required")
	}
	if c.Verify && c.Roots == nil {
		return errors.New("loadgen: Verify needs Roots")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = pki.DefaultTrustDomain
	}
	phaseDefaults(&c.Concurrency, len(c.Identities), &c.Retry, &c.PhaseTimeout, &c.RequestTimeout, &c.ProgressEvery)
	return nil
}

// phaseDefaults fills in what a phase of devices (enrollments, step-ca
// signs) leaves zero: concurrency 64 (at most the devices), 8 attempts
// with backoff from 100 ms to 5 s, 10 minutes per phase, 30 s per request,
// a progress line every 2 s.
func phaseDefaults(concurrency *int, devices int, retry *RetryPolicy, phase, request, progress *time.Duration) {
	if *concurrency <= 0 {
		*concurrency = 64
	}
	*concurrency = min(*concurrency, devices)
	if retry.Attempts <= 0 {
		retry.Attempts = 8
	}
	if retry.Base <= 0 {
		retry.Base = 100 * time.Millisecond
	}
	if retry.Max <= 0 {
		retry.Max = 5 * time.Second
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{phase, 10 * time.Minute}, {request, 30 * time.Second}, {progress, 2 * time.Second}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
}

// Run drives every identity through an enrollment (and, with Renew, a
// second one) and reports what it measured. It returns an error only when
// it could not run; refused or failed enrollments are in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	rep := &Report{Setup: Setup{
		Server: cfg.ServerName, Transport: cfg.TransportName,
		Devices: len(cfg.Identities), Concurrency: cfg.Concurrency,
		RampSeconds: cfg.Ramp.Seconds(), Verify: cfg.Verify,
		CPUs: runtime.NumCPU(), CPUModel: CPUModel(), GoVersion: runtime.Version(),
		ServerPID: cfg.ServerPID, LoadBefore: loadAvg(),
	}}
	phases := []string{PhaseEnroll}
	if cfg.Renew {
		phases = append(phases, PhaseRenew)
	}
	for _, name := range phases {
		p, err := runPhase(ctx, &cfg, name)
		if err != nil {
			return nil, err
		}
		rep.Phases = append(rep.Phases, *p)
		switch name {
		case PhaseEnroll:
			rep.EnrollmentsPerSecond = p.PerSecond
			if p.Server != nil {
				rep.ServerCPUMsPerEnrollment = p.Server.CPUMsPerOp
			}
		case PhaseRenew:
			rep.RenewalsPerSecond = p.PerSecond
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	return rep, nil
}

// deviceResult is what one device did in a phase.
type deviceResult struct {
	ok                 bool
	attempts           int
	begins, finishes   []time.Duration
	tpm, tpmQueue      []time.Duration
	enrollment         time.Duration // the successful attempt
	scheduled, started time.Duration // since the phase start
	ready              time.Duration // since the phase start
	tpmQueueTotal      time.Duration
	errors             []string
}

// sample is a point-in-time reading of the processes involved.
type sample struct {
	server, store, devices, workers time.Duration
	serverOK, storeOK               bool // the figures were readable
	busy, total                     time.Duration
}

// serverPIDs are the server processes measured: none, or ServerPID and
// MoreServerPIDs.
func (cfg *Config) serverPIDs() []int {
	if cfg.ServerPID == 0 {
		return nil
	}
	return append([]int{cfg.ServerPID}, cfg.MoreServerPIDs...)
}

// sumCPU is the CPU time of pids together; ok is false if one was
// unreadable.
func sumCPU(pids []int) (total time.Duration, ok bool) {
	for _, pid := range pids {
		c, err := ProcessCPU(pid)
		if err != nil {
			return 0, false
		}
		total += c
	}
	return total, len(pids) > 0
}

// sumMemory is the RSS and VmHWM of pids added up.
func sumMemory(pids []int) (rss, peak uint64) {
	for _, pid := range pids {
		r, p, _ := ProcessMemory(pid)
		rss, peak = rss+r, peak+p
	}
	return rss, peak
}

func (cfg *Config) sample() sample {
	var s sample
	s.server, s.serverOK = sumCPU(cfg.serverPIDs())
	s.store, s.storeOK = sumCPU(cfg.StorePIDs)
	s.devices, _ = ProcessCPU(os.Getpid())
	for _, pid := range cfg.DevicePIDs {
		c, _ := ProcessCPU(pid)
		s.workers += c
	}
	s.devices += s.workers
	s.busy, s.total, _ = MachineCPU()
	return s
}

func runPhase(ctx context.Context, cfg *Config, name string) (*PhaseReport, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.PhaseTimeout)
	defer cancel()
	n := len(cfg.Identities)
	results := make([]deviceResult, n)

	// Server memory: sampled through the phase.
	rss := sampleRSS(cfg.serverPIDs())
	before := cfg.sample()
	l := drivePlan{N: n, Concurrency: cfg.Concurrency, Ramp: cfg.Ramp, Progress: cfg.Progress, ProgressEvery: cfg.ProgressEvery, Label: name, Verb: "ready"}
	elapsed := l.drive(ctx, func(i int, start time.Time, s schedule) bool {
		r := &results[i]
		r.scheduled, r.started = s.scheduled, s.started
		cfg.runDevice(ctx, cfg.Identities[i], r, start)
		return r.ok
	})
	after := cfg.sample()
	rssMax := rss.Stop()

	p := summarizePhase(name, results, elapsed)
	p.DeviceSide = cpuReport(append([]int{os.Getpid()}, cfg.DevicePIDs...), after.devices-before.devices, p.Succeeded)
	p.DeviceSide.WorkersCPUMsPerOp = cpuReport(nil, after.workers-before.workers, p.Succeeded).CPUMsPerOp
	if dt := after.total - before.total; dt > 0 {
		p.MachineBusy = round3(float64(after.busy-before.busy) / float64(dt))
	}
	if before.serverOK && after.serverOK {
		sp := cpuReport(cfg.serverPIDs(), after.server-before.server, p.Succeeded)
		sp.RSSMaxBytes = rssMax
		sp.RSSEndBytes, sp.PeakRSSBytes = sumMemory(cfg.serverPIDs())
		sp.RSSMaxBytes = max(sp.RSSMaxBytes, sp.RSSEndBytes)
		p.Server = &sp
	}
	if before.storeOK && after.storeOK {
		st := cpuReport(cfg.StorePIDs, after.store-before.store, p.Succeeded)
		st.RSSEndBytes, st.PeakRSSBytes = sumMemory(cfg.StorePIDs)
		p.Store = &st
	}
	return p, nil
}

func summarizePhase(name string, results []deviceResult, elapsed time.Duration) *PhaseReport {
	p := &PhaseReport{Name: name, Devices: len(results), Seconds: round3(elapsed.Seconds()),
		Errors: map[string]int{}, Retries: RetryReport{Histogram: map[int]int{}}}
	var begins, finishes, tpm, tpmQueue, enrollment, ttr, ttrOwn, startDelay []time.Duration
	for i := range results {
		r := &results[i]
		begins = append(begins, r.begins...)
		finishes = append(finishes, r.finishes...)
		tpm = append(tpm, r.tpm...)
		tpmQueue = append(tpmQueue, r.tpmQueue...)
		startDelay = append(startDelay, max(r.started-r.scheduled, 0))
		for _, c := range r.errors {
			p.Errors[c]++
		}
		p.Retries.add(r.attempts)
		if !r.ok {
			p.Failed++
			continue
		}
		p.Succeeded++
		enrollment = append(enrollment, r.enrollment)
		ttr = append(ttr, r.ready-r.scheduled)
		ttrOwn = append(ttrOwn, r.ready-r.scheduled-r.tpmQueueTotal)
	}
	p.PerSecond = round3(float64(p.Succeeded) / elapsed.Seconds())
	p.Begin, p.Finish = Summarize(begins), Summarize(finishes)
	p.TPM, p.TPMQueue = Summarize(tpm), Summarize(tpmQueue)
	p.Enrollment = Summarize(enrollment)
	p.TimeToReady, p.TimeToReadyOwnTPM = Summarize(ttr), Summarize(ttrOwn)
	p.StartDelay = Summarize(startDelay)
	return p
}

// runDevice runs one device's enrollment with retries, as the agent does:
// transient failures are retried with backoff; a finish that may not have
// arrived is resent with the same answer; a lost session starts over.
func (cfg *Config) runDevice(ctx context.Context, id *Identity, r *deviceResult, phaseStart time.Time) {
	tr, err := cfg.Transport(id)
	if err != nil {
		r.attempts = 1
		r.errors = append(r.errors, CodeLocal)
		return
	}
	defer tr.Close()
	begin := id.BeginRequest()
	var (
		answer    *api.FinishRequest
		sessionID string
		secret    []byte
	)
	sealKey := func() ([]byte, error) { return sealing.Key(secret, sessionID) }
	for attempt := 1; attempt <= cfg.Retry.Attempts && ctx.Err() == nil; attempt++ {
		r.attempts = attempt
		corr := "bench-" + strconv.Itoa(id.Index) + "-" + strconv.Itoa(attempt)
		attemptStart := time.Now()
		err := func() error {
			if answer == nil {
				t0 := time.Now()
				br, err := withTimeout(ctx, cfg.RequestTimeout, func(ctx context.Context) (*api.BeginResponse, error) {
					return tr.Begin(ctx, corr, begin)
				})
				if err != nil {
					return err
				}
				r.begins = append(r.begins, time.Since(t0))
				if br.DeviceID != id.DeviceID {
					return classified{CodeVerify, fmt.Errorf("server computed device ID %s, want %s", br.DeviceID, id.DeviceID)}
				}
				t1 := time.Now()
				a, err := cfg.Prover.Answer(ctx, id, br)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return classified{CodeTPM, err}
				}
				queued := max(time.Since(t1)-a.TPM, 0)
				r.tpm, r.tpmQueue = append(r.tpm, a.TPM), append(r.tpmQueue, queued)
				r.tpmQueueTotal += queued
				answer, sessionID, secret = a.Finish, br.SessionID, a.Secret
			}
			t2 := time.Now()
			fr, err := withTimeout(ctx, cfg.RequestTimeout, func(ctx context.Context) (*api.FinishResponse, error) {
				return tr.Finish(ctx, corr, answer, sealKey)
			})
			if err != nil {
				// Resend the same answer only if it may not have
				// arrived; otherwise start over with begin.
				if retry, _ := retryable(ctx, err); !retry || errors.Is(err, &api.Error{Code: api.CodeNonceUnknownOrUsed}) {
					answer = nil
				}
				return err
			}
			r.finishes = append(r.finishes, time.Since(t2))
			if cfg.Verify {
				if err := cfg.verify(id, answer, fr); err != nil {
					return classified{CodeVerify, err}
				}
			}
			if cfg.Certificates != nil {
				if err := cfg.Certificates.put(id, fr.CertificateChain); err != nil {
					return classified{CodeVerify, err}
				}
			}
			return nil
		}()
		if err == nil {
			r.ok = true
			r.enrollment = time.Since(attemptStart)
			r.ready = time.Since(phaseStart)
			return
		}
		r.errors = append(r.errors, errorCode(err))
		retry, retryAfter := retryable(ctx, err)
		if !retry || attempt == cfg.Retry.Attempts {
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(cfg.Retry.backoff(attempt, retryAfter)):
		}
	}
	if !r.ok && ctx.Err() != nil && (len(r.errors) == 0 || r.errors[len(r.errors)-1] != CodeTimeout) {
		r.errors = append(r.errors, CodeTimeout)
	}
}

// retryable reports whether a failed attempt is worth retrying: the
// transport says so (network, 5xx, 429, a lost session), or one request
// ran out of time while the phase has time left. (device.Agent's Enroll
// gives up on a request timeout; a device in a boot storm should not.)
func retryable(phase context.Context, err error) (bool, time.Duration) {
	var te *device.TransientError
	if errors.As(err, &te) {
		return true, te.RetryAfter
	}
	return errors.Is(err, context.DeadlineExceeded) && phase.Err() == nil, 0
}

// classified is a device-side failure with its error class.
type classified struct {
	code string
	err  error
}

func (c classified) Error() string { return c.code + ": " + c.err.Error() }
func (c classified) Unwrap() error { return c.err }

// errorCode names a failed attempt: its protocol code, or a device-side
// class.
func errorCode(err error) string {
	var c classified
	if errors.As(err, &c) {
		return c.code
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return string(ae.Code)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return CodeTimeout
	}
	if device.IsTransient(err) {
		return CodeNetwork
	}
	return CodeLocal
}

// verify checks the server's answer as device.Agent does: the chain leads
// to the root for client auth, names this device and carries the key the
// CSR was signed with, and the bundle verifies.
func (cfg *Config) verify(id *Identity, f *api.FinishRequest, fr *api.FinishResponse) error {
	if len(fr.CertificateChain) == 0 || len(fr.CertificateChain) > 4 {
		return fmt.Errorf("certificate chain of %d certificates", len(fr.CertificateChain))
	}
	leaf, err := x509.ParseCertificate(fr.CertificateChain[0])
	if err != nil {
		return fmt.Errorf("leaf certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, der := range fr.CertificateChain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("chain certificate: %w", err)
		}
		inter.AddCert(c)
	}
	now := time.Now()
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: cfg.Roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("device certificate does not chain to the root: %w", err)
	}
	devID, err := pki.DeviceIDFromCertificate(leaf, cfg.TrustDomain)
	if err != nil {
		return err
	}
	if devID != id.DeviceID {
		return fmt.Errorf("certificate names device %s, want %s", devID, id.DeviceID)
	}
	csr, err := x509.ParseCertificateRequest(f.CSR)
	if err != nil {
		return err
	}
	if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(csr.PublicKey) {
		return errors.New("certificate is for another key than the TPM key")
	}
	if _, err := pki.VerifyBundle(fr.Bundle, cfg.Roots, id.DeviceID, now); err != nil {
		return fmt.Errorf("config bundle: %w", err)
	}
	return nil
}

func withTimeout[T any](ctx context.Context, d time.Duration, fn func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return fn(ctx)
}

// CreateIdentities makes identities for device indices from..to-1 of fleet
// with parallel requests in flight (a Pool spreads them over its workers).
func CreateIdentities(ctx context.Context, a Answerer, fleet []byte, from, to, parallel int) ([]*Identity, error) {
	if to <= from {
		return nil, nil
	}
	ids := make([]*Identity, to-from)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	next.Store(int64(from))
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for range max(parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= to || ctx.Err() != nil {
					return
				}
				id, err := a.NewIdentity(ctx, i, EKNonce(fleet, i))
				if err != nil {
					select {
					case errc <- fmt.Errorf("device %d: %w", i, err):
					default:
					}
					cancel()
					return
				}
				ids[i-from] = id
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return nil, err
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return ids, nil
}

// CPUModel is the first "model name" of /proc/cpuinfo, or "".
func CPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// loadAvg is the 1-minute load average, or 0.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return f
}
