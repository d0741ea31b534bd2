package loadgen

import (
	"context"
	"fmt"
	"io"
)

// StepCAComparison is CompareStepCA's outcome: our full-attestation
// enrollment and step-ca's plain sign, same machine, same invocation, same
// device count and concurrency.
type StepCAComparison struct {
	Identities IdentityReport `json:"identities"`
	// Ours is enrolld's runs and their medians (its enroll phase).
	Ours TransportResult `json:"ours"`
	// StepCA is step-ca's; StepCA.Skipped says why it was not measured.
	StepCA *StepCAResult `json:"stepca"`
	// OursOverStepCA is our median enrollments/s over step-ca's median
	// signs/s (goal: >= 1); ServerCPUOursOverStepCA the same for server
	// CPU per operation. 0 when step-ca was skipped.
	OursOverStepCA          float64 `json:"ours_over_stepca,omitempty"`
	ServerCPUOursOverStepCA float64 `json:"server_cpu_ours_over_stepca,omitempty"`
	// Order is the run order ("ours", "stepca") and LoadBefore the
	// 1-minute load average before each run, in that order.
	Order      []string  `json:"order"`
	LoadBefore []float64 `json:"load_before"`
}

// CompareStepCA builds (or takes) step-ca first, makes Devices × rounds
// device identities, starts step-ca, then runs rounds of our enrollment
// against cfg.ServerURL and step-ca's sign, alternating the order
// (ours step-ca, step-ca ours, ...) so a drift of the machine's load
// favours neither. step-ca's load takes cfg's device count, concurrency,
// ramp, retry policy, timeouts and verification, so both see the same
// load generator. If step-ca cannot be built, ours still runs and the
// result says why step-ca was skipped.
func CompareStepCA(ctx context.Context, cfg BenchConfig, sc StepCAConfig, rounds int) (*StepCAComparison, error) {
	rounds = max(rounds, 1)
	sc.Progress = cfg.Stderr
	sc.Load = StepCALoad{
		Devices: cfg.Devices, Concurrency: cfg.Run.Concurrency, Ramp: cfg.Run.Ramp, Retry: cfg.Run.Retry,
		PhaseTimeout: cfg.Run.PhaseTimeout, RequestTimeout: cfg.Run.RequestTimeout, Verify: cfg.Run.Verify,
		Progress: cfg.Run.Progress, ProgressEvery: cfg.Run.ProgressEvery,
	}
	if err := sc.Load.defaults(); err != nil {
		return nil, err
	}
	res, err := resolveStepCA(ctx, &sc)
	if err != nil {
		return nil, err
	}
	if res.Skipped != "" {
		fmt.Fprintf(stepCAProgress(cfg.Stderr), "step-ca comparison skipped: %s\n", res.Skipped)
	}

	n := cfg.Devices
	env, err := setupBench(ctx, &cfg, []string{cfg.ServerURL}, n*rounds)
	if err != nil {
		return nil, err
	}
	defer env.pool.Close()
	_, tr, _ := serverTransport(cfg.ServerURL)
	cmp := &StepCAComparison{Identities: env.idRep, Ours: TransportResult{Server: cfg.ServerURL, Transport: tr}, StepCA: res}

	var ca *StepCA
	if res.Skipped == "" {
		if ca, err = StartStepCA(ctx, res.Build.Path, sc.Dir, sc.DB); err != nil {
			return nil, err
		}
		defer ca.Close()
		res.CA = &ca.Info
	}
	next := 0
	for r := range rounds {
		order := []string{"ours", "stepca"}
		if r%2 == 1 {
			order = []string{"stepca", "ours"}
		}
		for _, who := range order {
			switch {
			case who == "ours":
				fmt.Fprintf(stepCAProgress(cfg.Stderr), "round %d/%d: ours, %s\n", r+1, rounds, cfg.ServerURL)
				rep, err := env.run(ctx, &cfg, cfg.ServerURL, env.set.Identities[next:next+n])
				next += n
				if err != nil {
					return nil, fmt.Errorf("ours, round %d: %w", r+1, err)
				}
				cmp.Ours.Runs = append(cmp.Ours.Runs, rep)
				cmp.LoadBefore = append(cmp.LoadBefore, rep.Setup.LoadBefore)
			case ca != nil:
				fmt.Fprintf(stepCAProgress(cfg.Stderr), "round %d/%d: step-ca, %s\n", r+1, rounds, ca.Info.URL)
				run, err := ca.Run(ctx, sc.Load)
				if err != nil {
					return nil, fmt.Errorf("step-ca, round %d: %w", r+1, err)
				}
				res.Runs = append(res.Runs, run)
				cmp.LoadBefore = append(cmp.LoadBefore, run.Setup.LoadBefore)
			default:
				continue
			}
			cmp.Order = append(cmp.Order, who)
		}
	}

	o := &cmp.Ours
	o.summarize()
	if res.Skipped == "" {
		res.summarize()
		if res.SignsPerSecond > 0 {
			cmp.OursOverStepCA = round3(o.EnrollmentsPerSecond / res.SignsPerSecond)
		}
		if res.ServerCPUMsPerSign > 0 {
			cmp.ServerCPUOursOverStepCA = round3(o.ServerCPUMsPerEnrollment / res.ServerCPUMsPerSign)
		}
	}
	return cmp, nil
}

// WriteText prints the comparison side by side.
func (c *StepCAComparison) WriteText(w io.Writer) {
	if len(c.Ours.Runs) > 0 {
		s := c.Ours.Runs[0].Setup
		fmt.Fprintf(w, "%d devices per run, concurrency %d, ramp %.1fs, verify %v, for both; %d CPUs (%s), %s\n",
			s.Devices, s.Concurrency, s.RampSeconds, s.Verify, s.CPUs, s.CPUModel, s.GoVersion)
		fmt.Fprintf(w, "ours: %s over %s (%s), %d TPM workers\n", s.Server, s.Transport, s.TLS, s.Workers)
	}
	id := c.Identities
	if id.Created > 0 {
		fmt.Fprintf(w, "identities: %d (%d created in %.1fs, before timing)\n", id.Count, id.Created, id.Seconds)
	} else {
		fmt.Fprintf(w, "identities: %d, from the identity file\n", id.Count)
	}
	if c.StepCA == nil || c.StepCA.Skipped != "" {
		if c.StepCA != nil {
			fmt.Fprintf(w, "step-ca comparison skipped: %s\n", c.StepCA.Skipped)
		}
	} else {
		c.StepCA.writeCA(w)
	}
	fmt.Fprintf(w, "run order %v, load average before each run %v\n\n", c.Order, c.LoadBefore)

	fmt.Fprintf(w, "%-46s %4s %9s %12s %12s %8s %8s %8s %7s  %s\n", "", "runs", "ops/s", "server ms/op", "client ms/op",
		"p50 ms", "p95 ms", "p99 ms", "failed", "ops/s per run")
	var p50, p95, client []float64
	var per []string
	for _, rep := range c.Ours.Runs {
		per = append(per, fmt.Sprintf("%.1f", rep.EnrollmentsPerSecond))
		for _, p := range rep.Phases {
			if p.Name == PhaseEnroll {
				p50, p95 = append(p50, p.Enrollment.P50), append(p95, p.Enrollment.P95)
				client = append(client, p.DeviceSide.CPUMsPerOp)
			}
		}
	}
	fmt.Fprintf(w, "%-46s %4d %9.1f %12.3f %12.3f %8.1f %8.1f %8.1f %7d  %v\n", "edgeenroll enrollment (full TPM attestation)",
		len(c.Ours.Runs), c.Ours.EnrollmentsPerSecond, c.Ours.ServerCPUMsPerEnrollment, median(client), median(p50), median(p95),
		c.Ours.EnrollmentP99Ms, c.Ours.Failed, per)
	if sc := c.StepCA; sc != nil && sc.Skipped == "" {
		p50, p95, per = nil, nil, nil
		for _, run := range sc.Runs {
			per = append(per, fmt.Sprintf("%.1f", run.SignsPerSecond))
			p50, p95 = append(p50, run.Phase.Sign.P50), append(p95, run.Phase.Sign.P95)
		}
		fmt.Fprintf(w, "%-46s %4d %9.1f %12.3f %12.3f %8.1f %8.1f %8.1f %7d  %v\n", "step-ca /1.0/sign (JWK token, no attestation)",
			len(sc.Runs), sc.SignsPerSecond, sc.ServerCPUMsPerSign, sc.ClientCPUMsPerSign, median(p50), median(p95), sc.SignP99Ms, sc.Failed, per)
		fmt.Fprintln(w, "(client ms/op: the load generator's CPU per operation on this machine; ours includes the simulated TPMs)")
		fmt.Fprintf(w, "\nours/step-ca (medians): rate %.2f (goal >= 1.00), server CPU per operation %.2f\n",
			c.OursOverStepCA, c.ServerCPUOursOverStepCA)
	}
}
