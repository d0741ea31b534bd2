package device

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
)

// RunOptions tune Run. Zero values take the documented defaults.
type RunOptions struct {
	// RenewAt is the fraction of a certificate's lifetime after which it
	// is renewed; default 2/3.
	RenewAt float64
	// RenewJitter spreads renewals of a fleet: the renewal time moves by up
	// to ±RenewJitter/2 of the lifetime; default 0.1.
	RenewJitter float64
	// Retry paces retries of transient failures (Attempts is ignored: Run
	// retries until it succeeds); default base 1 s, cap 5 min.
	Retry RetryPolicy
	// AttemptTimeout bounds one enrollment attempt; default 2 min.
	AttemptTimeout time.Duration
	// PermanentBackoff is the wait after a permanent refusal (untrusted EK,
	// denied, revoked) before asking again, so an operator's fix is picked
	// up without hammering the server; default 1 h.
	PermanentBackoff time.Duration
	// Refresh triggers a renewal (re-attestation and bundle fetch) now.
	Refresh <-chan struct{}
	// OnStatus receives every change of status; it must not block long.
	OnStatus func(Status)
	// StartedAt is when the agent process started, for time-to-ready;
	// zero means when Run was called.
	StartedAt time.Time
}

func (o *RunOptions) defaults() {
	if o.RenewAt <= 0 || o.RenewAt >= 1 {
		o.RenewAt = 2.0 / 3
	}
	if o.RenewJitter < 0 || o.RenewJitter >= 1 {
		o.RenewJitter = 0.1
	}
	// RenewAt − RenewJitter/2 must stay above 0, or a renewal could fall
	// due at the certificate's start.
	o.RenewJitter = min(o.RenewJitter, o.RenewAt)
	if o.Retry.Base <= 0 {
		o.Retry.Base = time.Second
	}
	if o.Retry.Max <= 0 {
		o.Retry.Max = 5 * time.Minute
	}
	if o.AttemptTimeout <= 0 {
		o.AttemptTimeout = 2 * time.Minute
	}
	if o.PermanentBackoff <= 0 {
		o.PermanentBackoff = time.Hour
	}
	if o.OnStatus == nil {
		o.OnStatus = func(Status) {}
	}
}

// Phases reported in Status.
const (
	PhaseEnrolling = "enrolling" // no usable certificate; attesting
	PhaseReady     = "ready"     // certificate and bundle valid
	PhaseRenewing  = "renewing"  // ready, re-attesting for a new certificate
	PhaseRetrying  = "retrying"  // an attempt failed; waiting to retry
	PhaseRefused   = "refused"   // the server refused permanently; waiting for an operator
)

// Status is the agent's state as a supervisor sees it.
type Status struct {
	DeviceID      string    `json:"device_id"`
	Ready         bool      `json:"ready"`
	Phase         string    `json:"phase"`
	Reason        string    `json:"reason,omitempty"`
	CertSerial    string    `json:"cert_serial,omitempty"`
	CertNotAfter  time.Time `json:"cert_not_after,omitzero"`
	BundleVersion uint64    `json:"bundle_version,omitempty"`
	NextRenewal   time.Time `json:"next_renewal,omitzero"`
	// Attempts counts enrollment attempts in this boot.
	Attempts      int       `json:"attempts"`
	LastErrorCode string    `json:"last_error_code,omitempty"`
	LastError     string    `json:"last_error,omitempty"`
	ReadySince    time.Time `json:"ready_since,omitzero"`
	StartedAt     time.Time `json:"started_at"`
	PID           int       `json:"pid"`
}

// Run keeps the device enrolled until ctx ends: ready at once from a valid
// cache, enrolling otherwise, and re-attesting for a new certificate at
// RenewAt of its lifetime. Failures are retried with capped exponential
// backoff and full jitter (transient) or after PermanentBackoff
// (permanent); a failed renewal leaves the valid certificate in use. Run
// returns ctx's error.
func (a *Agent) Run(ctx context.Context, o RunOptions) error {
	o.defaults()
	var pushes <-chan string
	if pt, ok := a.server.(PushTransport); ok {
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go pt.Listen(lctx)
		pushes = pt.Pushes()
	}
	start := o.StartedAt
	if start.IsZero() {
		start = a.cfg.Now()
	}
	st := Status{StartedAt: start, PID: os.Getpid()}
	var (
		renewAt    time.Time
		renewFor   string // serial renewAt was computed for
		refreshNow bool
		refusal    error // permanent refusal of revoked/denied: not ready
		failures   int
		enrolledAt time.Time // when this run last got a certificate
	)
	for {
		now := a.cfg.Now()
		cs := a.CachedState(now)
		st.DeviceID, st.Reason = cs.DeviceID, cs.Reason
		st.Ready = cs.Ready && refusal == nil
		st.CertSerial, st.CertNotAfter, st.BundleVersion, st.NextRenewal = "", time.Time{}, cs.BundleVersion, time.Time{}
		if cs.Leaf != nil {
			st.CertSerial, st.CertNotAfter = cs.Leaf.SerialNumber.Text(16), cs.Leaf.NotAfter
			a.metrics.certExpiry.Set(float64(cs.Leaf.NotAfter.Unix()))
		}
		if refusal != nil {
			st.Reason = refusal.Error()
		}
		a.metrics.bundle.Set(float64(cs.BundleVersion))
		if st.Ready {
			if st.ReadySince.IsZero() {
				st.ReadySince = now
				a.metrics.timeToReady.Set(now.Sub(start).Seconds())
				a.log.Info("device ready", "phase", "ready", "device_id", st.DeviceID, "cert_not_after", cs.Leaf.NotAfter,
					"bundle_version", cs.BundleVersion, "time_to_ready", now.Sub(start).String())
			}
			a.metrics.ready.Set(1)
			if renewFor != st.CertSerial {
				renewAt, renewFor = a.renewalTime(cs.Leaf.NotBefore, cs.Leaf.NotAfter, o), st.CertSerial
				// NotBefore is on the server's clock and now on the
				// device's: with the device's far ahead, a certificate
				// just received would be due at once, and every renewal
				// followed by another. A certificate this run just
				// received is scheduled from when it arrived instead.
				if !enrolledAt.IsZero() {
					if t := enrolledAt.Add(renewAt.Sub(cs.Leaf.NotBefore)); t.Before(cs.Leaf.NotAfter) {
						renewAt = t
					} else {
						renewAt = cs.Leaf.NotAfter
					}
				}
			}
			st.NextRenewal = renewAt
			if now.Before(renewAt) && !refreshNow {
				st.Phase = PhaseReady
				o.OnStatus(st)
				if !a.sleep(ctx, renewAt.Sub(now), o.Refresh, &refreshNow, pushes, true) {
					return ctx.Err()
				}
				continue
			}
			st.Phase = PhaseRenewing
		} else {
			if !st.ReadySince.IsZero() {
				a.log.Warn("device no longer ready", "phase", "not_ready", "reason", st.Reason)
			}
			st.ReadySince = time.Time{}
			a.metrics.ready.Set(0)
			st.Phase = PhaseEnrolling
		}
		refreshNow = false
		o.OnStatus(st)

		// One attempt, bounded in time.
		renewing := st.Phase == PhaseRenewing
		st.Attempts++
		actx, cancel := context.WithTimeout(ctx, o.AttemptTimeout)
		_, err := a.enrollOnce(actx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			failures, refusal, enrolledAt = 0, nil, a.cfg.Now()
			st.LastErrorCode, st.LastError = "", ""
			if renewing {
				a.metrics.renewals.WithLabelValues("success").Inc()
			}
			continue
		}
		code := errorCode(err)
		a.metrics.errors.WithLabelValues(code).Inc()
		if renewing {
			a.metrics.renewals.WithLabelValues("failure").Inc()
		}
		st.LastErrorCode, st.LastError = code, err.Error()
		// Only the server's permanent refusal waits for an operator; any
		// other failure, the device's own included (a TPM error, a full
		// disk, an answer that does not verify), is retried with backoff.
		var wait time.Duration
		var te *TransientError
		var ae *api.Error
		if errors.As(err, &te) || !errors.As(err, &ae) || !ae.Code.Permanent() {
			failures++
			a.metrics.retries.Inc()
			var hint time.Duration
			if te != nil {
				hint = te.RetryAfter
			}
			wait = o.Retry.backoff(failures, hint)
			st.Phase = PhaseRetrying
			a.log.Warn("enrollment attempt failed; retrying", "attempt", st.Attempts, "wait", wait.String(), "code", code, "err", err)
		} else {
			wait = o.PermanentBackoff
			st.Phase = PhaseRefused
			if code == string(api.CodeRevoked) || code == string(api.CodeDenied) {
				refusal = err
				st.Ready = false
				a.metrics.ready.Set(0)
			}
			a.log.Error("enrollment refused; waiting for an operator before asking again", "code", code, "wait", wait.String(), "err", err)
		}
		o.OnStatus(st)
		// A pushed bundle is applied without ending the wait: the
		// backoff and the server's Retry-After stand, so a config
		// published to a group does not send its retrying devices at the
		// server at once.
		if !a.sleep(ctx, wait, o.Refresh, &refreshNow, pushes, false) {
			return ctx.Err()
		}
	}
}

// renewalTime is NotBefore + RenewAt × lifetime, moved by a random share of
// ±RenewJitter/2 of the lifetime, and never after NotAfter.
func (a *Agent) renewalTime(notBefore, notAfter time.Time, o RunOptions) time.Time {
	life := notAfter.Sub(notBefore)
	jitter := (rand.Float64() - 0.5) * o.RenewJitter
	t := notBefore.Add(time.Duration(float64(life) * (o.RenewAt + jitter)))
	if t.After(notAfter) {
		return notAfter
	}
	return t
}

// sleep waits d, or until a refresh is asked for (setting *refresh), or
// until ctx ends (returning false). A pushed config bundle is applied here;
// it ends the wait only if wakeOnPush (so that the caller reports the new
// bundle version).
func (a *Agent) sleep(ctx context.Context, d time.Duration, refreshCh <-chan struct{}, refresh *bool, pushes <-chan string, wakeOnPush bool) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-refreshCh:
			*refresh = true
			return true
		case compact := <-pushes:
			b, taken, err := a.ApplyBundle(compact)
			switch {
			case err != nil:
				a.log.Warn("refused a pushed config bundle", "err", err)
			case !taken:
				a.log.Warn("ignored a pushed config bundle older than the one stored", "offered_version", b.Version)
			default:
				a.log.Info("applied a pushed config bundle", "phase", "config", "bundle_version", b.Version)
			}
			if wakeOnPush && err == nil && taken {
				return true
			}
		case <-t.C:
			return true
		}
	}
}
