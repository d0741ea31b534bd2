package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
)

// CompareConfig runs the same load against several servers in one
// invocation, typically one enrolld's HTTPS listener and its embedded MQTT
// broker, so that the transports see the same machine, the same server
// state and the same load from other tenants.
type CompareConfig struct {
	// Bench is the shared configuration; its ServerURL is ignored and
	// Devices is the number of devices per run.
	Bench BenchConfig
	// ServerURLs are the servers, https:// or mqtts://.
	ServerURLs []string
	// Rounds is how many runs each server gets; 0 means 1. Rounds
	// alternate the order of the servers (A B, B A, A B, ...) so a drift
	// in machine load does not favour one of them.
	Rounds int
	// Ceiling, if set, measures the crypto ceiling (one enrollment's
	// cryptography, µs of CPU; see package ceiling) after each round, so
	// that each run's server CPU is set against a ceiling measured on the
	// machine as it was then: this machine's speed drifts by more than
	// the differences measured.
	Ceiling func(context.Context) (micros float64, err error)
}

// Comparison is Compare's outcome.
type Comparison struct {
	Identities IdentityReport `json:"identities"`
	// Results has one entry per server, in the order given.
	Results []TransportResult `json:"results"`
	// MQTTOverHTTPS is the median MQTT enrollment rate over the median
	// HTTPS one, and CPUMQTTOverHTTPS the same for server CPU per
	// enrollment (0 unless both transports ran).
	MQTTOverHTTPS    float64 `json:"mqtt_over_https,omitempty"`
	CPUMQTTOverHTTPS float64 `json:"server_cpu_mqtt_over_https,omitempty"`
	// LoadBefore is the 1-minute load average before each run, in run
	// order.
	LoadBefore []float64 `json:"load_before"`
	// CeilingMicros is the crypto ceiling measured after each round
	// (CompareConfig.Ceiling), in round order.
	CeilingMicros []float64 `json:"ceiling_us,omitempty"`
	// CeilingError is why a ceiling measurement failed: the runs are
	// kept, without ratios.
	CeilingError string `json:"ceiling_error,omitempty"`
}

// TransportResult is one server's runs and their medians.
type TransportResult struct {
	Server    string `json:"server"`
	Transport string `json:"transport"`
	// Medians over the runs.
	EnrollmentsPerSecond     float64 `json:"enrollments_per_second"`
	RenewalsPerSecond        float64 `json:"renewals_per_second,omitempty"`
	ServerCPUMsPerEnrollment float64 `json:"server_cpu_ms_per_enrollment"`
	EnrollmentP99Ms          float64 `json:"enrollment_p99_ms"`
	Failed                   int     `json:"failed"` // devices that failed, all runs and phases
	// CeilingRatios is, per run, the server's capacity over the crypto
	// ceiling measured after the run's round (the ceiling's CPU per
	// enrollment over the server's), 0 for a run without a server CPU
	// figure, and CeilingRatio the median of the others; set with
	// CompareConfig.Ceiling.
	CeilingRatios []float64 `json:"capacity_over_ceiling_per_run,omitempty"`
	CeilingRatio  float64   `json:"capacity_over_ceiling,omitempty"`
	Runs          []*Report `json:"runs"`
}

// Compare makes (or loads) Devices × servers × rounds identities, so that
// every run enrolls devices the server has not seen in this invocation,
// then runs the load against each server in turn.
func Compare(ctx context.Context, cc CompareConfig) (*Comparison, error) {
	if len(cc.ServerURLs) == 0 {
		return nil, errors.New("loadgen: no servers to compare")
	}
	rounds := max(cc.Rounds, 1)
	cfg := cc.Bench
	n := cfg.Devices
	total := n * len(cc.ServerURLs) * rounds
	env, err := setupBench(ctx, &cfg, cc.ServerURLs, total)
	if err != nil {
		return nil, err
	}
	defer env.pool.Close()
	cmp := &Comparison{Identities: env.idRep, Results: make([]TransportResult, len(cc.ServerURLs))}
	for i, u := range cc.ServerURLs {
		_, tr, _ := serverTransport(u)
		cmp.Results[i] = TransportResult{Server: u, Transport: tr}
	}
	next := 0
	for r := range rounds {
		for k := range cc.ServerURLs {
			i := k
			if r%2 == 1 {
				i = len(cc.ServerURLs) - 1 - k
			}
			fmt.Fprintf(cfg.Stderr, "round %d/%d: %s\n", r+1, rounds, cc.ServerURLs[i])
			rep, err := env.run(ctx, &cfg, cc.ServerURLs[i], env.set.Identities[next:next+n])
			next += n
			if err != nil {
				return nil, fmt.Errorf("%s, round %d: %w", cc.ServerURLs[i], r+1, err)
			}
			cmp.Results[i].Runs = append(cmp.Results[i].Runs, rep)
			cmp.LoadBefore = append(cmp.LoadBefore, rep.Setup.LoadBefore)
		}
		if cc.Ceiling != nil && cmp.CeilingError == "" {
			us, err := cc.Ceiling(ctx)
			if err != nil {
				cmp.CeilingError = fmt.Sprintf("crypto ceiling after round %d: %v", r+1, err)
				cmp.CeilingMicros = nil
			} else {
				cmp.CeilingMicros = append(cmp.CeilingMicros, us)
			}
		}
	}
	var https, mqtt *TransportResult
	for i := range cmp.Results {
		res := &cmp.Results[i]
		res.summarize()
		res.setCeiling(cmp.CeilingMicros)
		switch {
		case res.Transport == TransportHTTPS && https == nil:
			https = res
		case res.Transport == TransportMQTT && mqtt == nil:
			mqtt = res
		}
	}
	if https != nil && mqtt != nil {
		if https.EnrollmentsPerSecond > 0 {
			cmp.MQTTOverHTTPS = round3(mqtt.EnrollmentsPerSecond / https.EnrollmentsPerSecond)
		}
		if https.ServerCPUMsPerEnrollment > 0 {
			cmp.CPUMQTTOverHTTPS = round3(mqtt.ServerCPUMsPerEnrollment / https.ServerCPUMsPerEnrollment)
		}
	}
	return cmp, nil
}

// median of xs (the mean of the middle two for an even count), 0 if none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return round3(s[len(s)/2])
	}
	return round3((s[len(s)/2-1] + s[len(s)/2]) / 2)
}

// WriteText prints the comparison side by side.
func (c *Comparison) WriteText(w io.Writer) {
	if len(c.Results) > 0 && len(c.Results[0].Runs) > 0 {
		s := c.Results[0].Runs[0].Setup
		fmt.Fprintf(w, "%d devices per run, concurrency %d, %d TPM workers, verify %v; %d CPUs (%s), %s\n",
			s.Devices, s.Concurrency, s.Workers, s.Verify, s.CPUs, s.CPUModel, s.GoVersion)
	}
	id := c.Identities
	if id.Created > 0 {
		fmt.Fprintf(w, "identities: %d (%d created in %.1fs, before timing)\n", id.Count, id.Created, id.Seconds)
	} else {
		fmt.Fprintf(w, "identities: %d, from the identity file\n", id.Count)
	}
	fmt.Fprintf(w, "load average before each run: %v\n\n", c.LoadBefore)
	fmt.Fprintf(w, "%-9s %-32s %5s %14s %12s %16s %13s %7s  %s\n", "transport", "server", "runs",
		"enrollments/s", "renewals/s", "server CPU ms/e", "enroll p99 ms", "failed", "enrollments/s per run")
	for _, r := range c.Results {
		var per []string
		for _, rep := range r.Runs {
			per = append(per, fmt.Sprintf("%.1f", rep.EnrollmentsPerSecond))
		}
		fmt.Fprintf(w, "%-9s %-32s %5d %14.1f %12.1f %16.3f %13.1f %7d  %v\n", r.Transport, r.Server, len(r.Runs),
			r.EnrollmentsPerSecond, r.RenewalsPerSecond, r.ServerCPUMsPerEnrollment, r.EnrollmentP99Ms, r.Failed, per)
	}
	if c.MQTTOverHTTPS > 0 {
		fmt.Fprintf(w, "\nMQTT/HTTPS (medians): enrollments/s %.2f (target >= 0.80), server CPU per enrollment %.2f\n",
			c.MQTTOverHTTPS, c.CPUMQTTOverHTTPS)
	}
	if c.CeilingError != "" {
		fmt.Fprintf(w, "\n%s: no ratios to the ceiling\n", c.CeilingError)
	}
	if len(c.CeilingMicros) > 0 {
		fmt.Fprintf(w, "\ncrypto ceiling after each round (µs per enrollment): %v\n", c.CeilingMicros)
		for _, r := range c.Results {
			measured := slices.DeleteFunc(slices.Clone(r.CeilingRatios), func(x float64) bool { return x == 0 })
			if len(measured) == 0 {
				continue
			}
			fmt.Fprintf(w, "%-9s server capacity / ceiling, each run against its round's ceiling: median %.1f %% (%.1f-%.1f %%; target >= 50 %%)\n",
				r.Transport, 100*r.CeilingRatio, 100*slices.Min(measured), 100*slices.Max(measured))
		}
	}
}

// setCeiling sets r's ratios to the ceilings measured after each round
// (none: no ratios): run k ran in round k. A run without a server CPU
// figure gets 0, so that the list stays aligned with the runs, and is
// left out of the median.
func (r *TransportResult) setCeiling(ceilingMicros []float64) {
	r.CeilingRatios = nil
	var measured []float64
	for k, rep := range r.Runs {
		if k >= len(ceilingMicros) {
			break
		}
		ratio := 0.0
		if rep.ServerCPUMsPerEnrollment > 0 {
			ratio = round3(ceilingMicros[k] / 1000 / rep.ServerCPUMsPerEnrollment)
			measured = append(measured, ratio)
		}
		r.CeilingRatios = append(r.CeilingRatios, ratio)
	}
	r.CeilingRatio = median(measured)
}

// summarize fills r's medians and failure count from its runs.
func (r *TransportResult) summarize() {
	var rate, renew, cpu, p99 []float64
	r.Failed = 0
	for _, rep := range r.Runs {
		rate = append(rate, rep.EnrollmentsPerSecond)
		renew = append(renew, rep.RenewalsPerSecond)
		cpu = append(cpu, rep.ServerCPUMsPerEnrollment)
		for _, p := range rep.Phases {
			r.Failed += p.Failed
			if p.Name == PhaseEnroll {
				p99 = append(p99, p.Enrollment.P99)
			}
		}
	}
	r.EnrollmentsPerSecond, r.RenewalsPerSecond = median(rate), median(renew)
	r.ServerCPUMsPerEnrollment, r.EnrollmentP99Ms = median(cpu), median(p99)
}
