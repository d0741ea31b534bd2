package loadgen

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"time"
)

// Report is the outcome of a Run, as enroll-bench prints it (-o json).
type Report struct {
	Setup      Setup          `json:"setup"`
	Identities IdentityReport `json:"identities"`
	Phases     []PhaseReport  `json:"phases"`
	// EnrollmentsPerSecond and RenewalsPerSecond are the observed rates of
	// the enroll and renew phases (0 if the phase did not run).
	EnrollmentsPerSecond float64 `json:"enrollments_per_second"`
	RenewalsPerSecond    float64 `json:"renewals_per_second"`
	// ServerCPUMsPerEnrollment is the server's CPU time per successful
	// enrollment of the enroll phase: the figure that sets what the
	// server could sustain, apart from the simulated devices' cost.
	ServerCPUMsPerEnrollment float64 `json:"server_cpu_ms_per_enrollment"`
}

// Setup says what was measured and on what.
type Setup struct {
	Server      string  `json:"server"`
	Transport   string  `json:"transport"`
	TLS         string  `json:"tls,omitempty"` // version and key exchange of a probe connection
	Devices     int     `json:"devices"`
	Concurrency int     `json:"concurrency"`
	Workers     int     `json:"workers"`
	RampSeconds float64 `json:"ramp_seconds"`
	Verify      bool    `json:"verify"`
	CPUs        int     `json:"cpus"`
	CPUModel    string  `json:"cpu_model,omitempty"`
	GoVersion   string  `json:"go_version"`
	ServerPID   int     `json:"server_pid,omitempty"`
	// LoadBefore is /proc/loadavg's 1-minute figure before the run.
	LoadBefore float64 `json:"load_before,omitempty"`
}

// IdentityReport is the identity pre-creation, done before timing.
type IdentityReport struct {
	Count int `json:"count"`
	// Created were made in this run; the rest came from a cache file.
	Created   int     `json:"created"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
}

// PhaseReport is one pass over every device: "enroll" (first
// attestation) or "renew" (a second full attestation of the same device).
type PhaseReport struct {
	Name      string  `json:"name"`
	Devices   int     `json:"devices"`
	Succeeded int     `json:"succeeded"`
	Failed    int     `json:"failed"`
	Seconds   float64 `json:"seconds"`
	// PerSecond is succeeded / seconds, as observed: bounded by whichever
	// of the server and the simulated devices is slower.
	PerSecond float64 `json:"per_second"`

	// Latency of successful requests and steps, in milliseconds.
	Begin  Summary `json:"begin"`
	Finish Summary `json:"finish"`
	// TPM is the simulated TPM's work per answer; TPMQueue is the wait
	// for a free simulator before it (device-side artefact: a real device
	// has its own TPM).
	TPM      Summary `json:"tpm"`
	TPMQueue Summary `json:"tpm_queue"`
	// Enrollment is one whole successful attempt: begin, TPM, finish and
	// verification of the answer.
	Enrollment Summary `json:"enrollment"`
	// TimeToReady runs from a device's scheduled start to its verified
	// certificate, retries included; TimeToReadyOwnTPM subtracts the
	// device's TPM queueing, estimating devices that each have a TPM.
	TimeToReady       Summary `json:"time_to_ready"`
	TimeToReadyOwnTPM Summary `json:"time_to_ready_own_tpm"`
	// StartDelay is how late devices started because every concurrency
	// slot was busy.
	StartDelay Summary `json:"start_delay"`

	Retries RetryReport `json:"retries"`
	// Errors counts failed attempts by protocol code; "network" is a
	// transport failure without an answer, "tpm" and "verify" are
	// device-side failures.
	Errors map[string]int `json:"errors"`

	Server *ProcessReport `json:"server,omitempty"`
	// Store is the shared store's processes (an etcd cluster), if given.
	Store      *ProcessReport `json:"store,omitempty"`
	DeviceSide ProcessReport  `json:"device_side"`
	// MachineBusy is the fraction of all cores' time that was busy.
	MachineBusy float64 `json:"machine_busy"`
}

// RetryReport counts retries per device (attempts beyond the first).
type RetryReport struct {
	Total          int `json:"total"`
	DevicesRetried int `json:"devices_retried"`
	Max            int `json:"max"`
	// Histogram maps a retry count to how many devices needed it.
	Histogram map[int]int `json:"histogram"`
}

// add counts one device that made attempts attempts (none: not counted).
func (rr *RetryReport) add(attempts int) {
	if attempts <= 0 {
		return
	}
	retries := attempts - 1
	rr.Histogram[retries]++
	rr.Total += retries
	rr.Max = max(rr.Max, retries)
	if retries > 0 {
		rr.DevicesRetried++
	}
}

// ProcessReport is CPU and memory of the server or of the device side.
type ProcessReport struct {
	PIDs       []int   `json:"pids"`
	CPUSeconds float64 `json:"cpu_seconds"`
	// CPUMsPerOp is CPU time per successful enrollment (or renewal),
	// failed attempts and retries included.
	CPUMsPerOp float64 `json:"cpu_ms_per_op"`
	// CapacityPerSecond is what CPUMsPerOp allows on every core of this
	// machine with nothing else running: cores × 1000 / CPUMsPerOp.
	CapacityPerSecond float64 `json:"capacity_per_second,omitempty"`
	// WorkersCPUMsPerOp is the device side's TPM worker processes' share
	// of CPUMsPerOp (the rest is this process: TLS, JSON, verification).
	WorkersCPUMsPerOp float64 `json:"workers_cpu_ms_per_op,omitempty"`
	RSSMaxBytes       uint64  `json:"rss_max_bytes,omitempty"`
	RSSEndBytes       uint64  `json:"rss_end_bytes,omitempty"`
	// PeakRSSBytes is VmHWM: the highest RSS since the process started.
	PeakRSSBytes uint64 `json:"peak_rss_bytes,omitempty"`
}

// cpuReport is the CPU part of a ProcessReport: pids spent cpu on ops
// successful operations.
func cpuReport(pids []int, cpu time.Duration, ops int) ProcessReport {
	perOp := cpu.Seconds() * 1000 / float64(max(ops, 1))
	r := ProcessReport{PIDs: pids, CPUSeconds: round3(cpu.Seconds()), CPUMsPerOp: round3(perOp)}
	if r.CPUMsPerOp > 0 {
		r.CapacityPerSecond = round3(float64(runtime.NumCPU()) * 1000 / perOp)
	}
	return r
}

// WriteText prints r for a person.
func (r *Report) WriteText(w io.Writer) {
	s := r.Setup
	fmt.Fprintf(w, "server %s over %s", s.Server, s.Transport)
	if s.TLS != "" {
		fmt.Fprintf(w, " (%s)", s.TLS)
	}
	fmt.Fprintf(w, "\n%d devices, concurrency %d, %d TPM workers, ramp %.1fs, verify %v; %d CPUs (%s), %s, load before %.2f\n",
		s.Devices, s.Concurrency, s.Workers, s.RampSeconds, s.Verify, s.CPUs, s.CPUModel, s.GoVersion, s.LoadBefore)
	id := r.Identities
	if id.Created > 0 {
		fmt.Fprintf(w, "identities: %d (%d created in %.1fs, %.0f/s, before timing)\n", id.Count, id.Created, id.Seconds, id.PerSecond)
	} else {
		fmt.Fprintf(w, "identities: %d, from the identity file\n", id.Count)
	}
	for _, p := range r.Phases {
		fmt.Fprintf(w, "\n%s: %d/%d succeeded, %d failed in %.2fs: %.1f/s observed\n", p.Name, p.Succeeded, p.Devices, p.Failed, p.Seconds, p.PerSecond)
		if p.Server != nil {
			fmt.Fprintf(w, "  server CPU %.2fs = %.3f ms per %s (capacity on %d cores: %.0f/s), RSS max %s, peak %s\n",
				p.Server.CPUSeconds, p.Server.CPUMsPerOp, opName(p.Name), s.CPUs, p.Server.CapacityPerSecond,
				mib(p.Server.RSSMaxBytes), mib(p.Server.PeakRSSBytes))
		}
		if p.Store != nil {
			fmt.Fprintf(w, "  store CPU %.2fs = %.3f ms per %s (%d processes), RSS %s\n",
				p.Store.CPUSeconds, p.Store.CPUMsPerOp, opName(p.Name), len(p.Store.PIDs), mib(p.Store.RSSEndBytes))
		}
		fmt.Fprintf(w, "  device side CPU %.2fs = %.3f ms per %s (%.3f in the TPM workers; alone on %d cores: %.0f/s); machine busy %.0f%%\n",
			p.DeviceSide.CPUSeconds, p.DeviceSide.CPUMsPerOp, opName(p.Name), p.DeviceSide.WorkersCPUMsPerOp, s.CPUs, p.DeviceSide.CapacityPerSecond, 100*p.MachineBusy)
		fmt.Fprintf(w, "  %-22s %8s %8s %8s %8s %8s\n", "latency (ms)", "p50", "p95", "p99", "max", "count")
		for _, row := range []struct {
			name string
			s    Summary
		}{
			{"begin", p.Begin}, {"finish", p.Finish}, {"enrollment", p.Enrollment},
			{"tpm", p.TPM}, {"tpm queue", p.TPMQueue}, {"start delay", p.StartDelay},
			{"time to ready", p.TimeToReady}, {"time to ready own TPM", p.TimeToReadyOwnTPM},
		} {
			fmt.Fprintf(w, "  %-22s %8.1f %8.1f %8.1f %8.1f %8d\n", row.name, row.s.P50, row.s.P95, row.s.P99, row.s.Max, row.s.Count)
		}
		fmt.Fprintf(w, "  retries: %d in total, %d devices retried, at most %d\n", p.Retries.Total, p.Retries.DevicesRetried, p.Retries.Max)
		if len(p.Errors) > 0 {
			codes := make([]string, 0, len(p.Errors))
			for c := range p.Errors {
				codes = append(codes, c)
			}
			slices.Sort(codes)
			fmt.Fprint(w, "  errors:")
			for _, c := range codes {
				fmt.Fprintf(w, " %s=%d", c, p.Errors[c])
			}
			fmt.Fprintln(w)
		}
	}
}

// opName names one operation of a phase.
func opName(phase string) string {
	if phase == PhaseRenew {
		return "renewal"
	}
	return "enrollment"
}

func mib(b uint64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
