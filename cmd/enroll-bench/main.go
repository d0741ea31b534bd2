// Command enroll-bench drives simulated devices with real TPM evidence
// against a running enrolld and reports throughput, latency, retries,
// refusals and the server's CPU and memory; "ceiling" measures the
// cryptography one enrollment needs on this machine. It links the TPM
// simulator (cgo): a benchmark tool, never shipped to devices.
//
// Exit codes: 0 success, 1 failure (the message says what to fix).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/enrollserver/store/etcdstore/etcdtest"
	"github.com/edgeenroll/edgeenroll/loadgen"
	"github.com/edgeenroll/edgeenroll/loadgen/ceiling"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{Use: "enroll-bench", Short: "Load and crypto-ceiling benchmarks for enrolld", SilenceUsage: true}
	root.AddCommand(runCmd(), compareCmd(), ceilingCmd(), manufacturerCmd(), workerCmd(), etcdCmd())
	root.AddCommand(stepcaCmd(), compareStepCACmd())
	root.SetContext(ctx)
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}

// output writes v as JSON or, for text, with its WriteText.
func output(w io.Writer, format string, v interface{ WriteText(io.Writer) }) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "text":
		v.WriteText(w)
		return nil
	}
	return fmt.Errorf("-o %q: want text or json", format)
}

func runCmd() *cobra.Command {
	var (
		cfg         loadgen.BenchConfig
		format      string
		noVerify    bool
		withCeiling bool
		ceilingTime time.Duration
		cpuProfile  string
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Enroll (and with --renew, re-attest) N simulated devices with concurrency C against a running enrolld",
		Long: `run makes N device identities (ECC EK with a certificate from the manufacturer in
--manufacturer-ca, ECDSA AK, P-256 TPM key) in W worker processes, each with a
software TPM, before timing; then every device enrolls over HTTPS (or MQTT, below) with fresh
server nonces and real TPM answers, C at a time. It reports rates, latency
percentiles, time to ready, retries, errors by code, and the server's CPU and
RSS from /proc (the server is found by its loopback port, or --server-pid).

Start enrolld trusting the manufacturer first:
  enroll-bench manufacturer --dir mfr
  enrolld serve --data-dir d --manufacturer-roots mfr/manufacturer_ca.crt &
  enroll-bench run --server https://localhost:8443 --root-ca d/ca/root_ca.crt --manufacturer-ca mfr -n 1000

With --server mqtts://HOST:PORT (enrolld --mqtt-listen, or an external broker's
bootstrap listener with --mqtt-device-server for its mTLS one) every device
enrolls over MQTT instead: its own connection under its own bootstrap client
ID, finish answers sealed to its TPM's activation secret. Renewals over MQTT
also use the bootstrap identity (the TPM key is in a worker process).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("-o %q: want text or json", format)
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.WorkerCommand = func() *exec.Cmd { return exec.Command(exe, "worker") }
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			cfg.Stderr = cmd.ErrOrStderr()
			cfg.Run.Verify = !noVerify
			cfg.Run.Progress = cmd.ErrOrStderr()
			rep, err := loadgen.Bench(cmd.Context(), cfg)
			if err != nil && rep == nil {
				return err
			}
			var out interface{ WriteText(io.Writer) } = rep
			if withCeiling {
				c, cerr := ceiling.Measure(cmd.Context(), ceiling.Options{Duration: ceilingTime, Progress: cmd.ErrOrStderr()})
				if cerr != nil {
					return errors.Join(err, cerr)
				}
				c.Compare(rep.EnrollmentsPerSecond, rep.ServerCPUMsPerEnrollment)
				out = &runWithCeiling{Report: rep, Ceiling: c}
			}
			if oerr := output(cmd.OutOrStdout(), format, out); oerr != nil {
				return oerr
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.ServerURL, "server", "https://localhost:8443", "enrolld: https://HOST:PORT, or mqtts://HOST:PORT for MQTT through its broker")
	fl.StringSliceVar(&cfg.MoreServerURLs, "also-server", nil, "more enrolld sharing --server's store (HTTPS, repeatable): each device begins on one and finishes on the next; their CPU adds up")
	fl.IntSliceVar(&cfg.StorePIDs, "store-pid", nil, "processes of the shared store (etcd), whose CPU is reported apart (repeatable)")
	benchFlags(cmd, &cfg, &noVerify, &format)
	fl.BoolVar(&withCeiling, "ceiling", false, "after the run, measure the crypto ceiling and compare")
	fl.DurationVar(&ceilingTime, "ceiling-time", 500*time.Millisecond, "CPU time per ceiling step")
	fl.StringVar(&cpuProfile, "cpuprofile", "", "write the load generator's own CPU profile here (device-side cost)")
	return cmd
}

// benchFlags are the flags run and compare share.
func benchFlags(cmd *cobra.Command, cfg *loadgen.BenchConfig, noVerify *bool, format *string) {
	fl := cmd.Flags()
	fl.StringVar(&cfg.MQTTDeviceURL, "mqtt-device-server", "", "MQTT broker listener for device certificates when it differs from the bootstrap one (mosquitto); default: the MQTT server")
	fl.StringVar(&cfg.RootCAFile, "root-ca", "", "enrollment root certificate (PEM), <enrolld data-dir>/ca/root_ca.crt (required)")
	fl.StringVar(&cfg.ManufacturerDir, "manufacturer-ca", "", "test TPM manufacturer CA directory whose root enrolld trusts; created if missing (required)")
	fl.StringVar(&cfg.IdentitiesFile, "identities", "", "keep device identities in this file between runs (skips pre-creation next time)")
	fl.IntVarP(&cfg.Devices, "devices", "n", 100, "number of simulated devices (per run)")
	fl.IntVarP(&cfg.Run.Concurrency, "concurrency", "c", 64, "devices in flight at once")
	fl.IntVar(&cfg.Workers, "workers", runtime.NumCPU(), "worker processes, each with one software TPM")
	fl.DurationVar(&cfg.Run.Ramp, "ramp", 0, "spread device starts evenly over this time (a boot storm: 10000 devices, --ramp 10s)")
	fl.BoolVar(&cfg.Run.Renew, "renew", false, "after enrolling, have every device attest again (renewals)")
	fl.IntVar(&cfg.Run.Retry.Attempts, "attempts", 8, "attempts per device and phase")
	fl.DurationVar(&cfg.Run.PhaseTimeout, "timeout", 10*time.Minute, "bound on each phase")
	fl.DurationVar(&cfg.Run.RequestTimeout, "request-timeout", 30*time.Second, "bound on each request")
	fl.IntVar(&cfg.ServerPID, "server-pid", 0, "enrolld's process ID for CPU and RSS (default: the process listening on the loopback port; -1: none)")
	fl.BoolVar(noVerify, "no-verify", false, "do not verify the certificate chain and bundle each device receives (saves device-side CPU)")
	fl.StringVarP(format, "output", "o", "text", "text or json")
	cmd.MarkFlagRequired("root-ca")
	cmd.MarkFlagRequired("manufacturer-ca")
}

func compareCmd() *cobra.Command {
	var (
		cc          loadgen.CompareConfig
		httpsURL    string
		mqttURL     string
		format      string
		noVerify    bool
		withCeiling bool
		ceilingTime time.Duration
	)
	cmd := &cobra.Command{
		Use:   "compare",
		Short: "Run the same load over HTTPS and over MQTT against one enrolld, in one invocation, and compare",
		Long: `compare runs N devices over HTTPS (--https) and N other devices over MQTT
(--mqtt), --rounds times each in alternating order (HTTPS MQTT, MQTT HTTPS, ...),
against the same enrolld started with both --listen and --mqtt-listen, and
prints the medians side by side: enrollments/s, renewals/s (--renew), server CPU
ms per enrollment, enrollment p99, and the MQTT/HTTPS ratios. Every run enrolls
devices that no earlier run of this invocation used (N x 2 x rounds identities,
kept with --identities). With --ceiling it measures the crypto ceiling after each
round and sets each run's server CPU against its round's ceiling.

  enrolld serve --data-dir d --listen 127.0.0.1:8443 --mqtt-listen 127.0.0.1:8883 \
    --manufacturer-roots mfr/manufacturer_ca.crt &
  enroll-bench compare --https https://localhost:8443 --mqtt mqtts://localhost:8883 \
    --root-ca d/ca/root_ca.crt --manufacturer-ca mfr -n 1000 -c 32 --rounds 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("-o %q: want text or json", format)
			}
			for _, u := range []string{httpsURL, mqttURL} {
				if u != "" {
					cc.ServerURLs = append(cc.ServerURLs, u)
				}
			}
			if len(cc.ServerURLs) == 0 {
				return errors.New("give --https, --mqtt or both")
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cc.Bench.WorkerCommand = func() *exec.Cmd { return exec.Command(exe, "worker") }
			cc.Bench.Stderr = cmd.ErrOrStderr()
			cc.Bench.Run.Verify = !noVerify
			cc.Bench.Run.Progress = cmd.ErrOrStderr()
			if withCeiling {
				cc.Ceiling = func(ctx context.Context) (float64, error) {
					r, err := ceiling.Measure(ctx, ceiling.Options{Duration: ceilingTime, Progress: cmd.ErrOrStderr()})
					if err != nil {
						return 0, err
					}
					return r.SumMicros, nil
				}
			}
			c, err := loadgen.Compare(cmd.Context(), cc)
			if err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), format, c)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&httpsURL, "https", "", "enrolld's HTTPS listener, https://HOST:PORT")
	fl.StringVar(&mqttURL, "mqtt", "", "enrolld's MQTT broker (bootstrap listener), mqtts://HOST:PORT")
	fl.IntVar(&cc.Rounds, "rounds", 3, "runs per transport, alternating order; medians are reported")
	fl.BoolVar(&withCeiling, "ceiling", false, "after each round, measure the crypto ceiling, and set each run's server CPU against its round's")
	fl.DurationVar(&ceilingTime, "ceiling-time", 500*time.Millisecond, "CPU time per ceiling step")
	benchFlags(cmd, &cc.Bench, &noVerify, &format)
	return cmd
}

// runWithCeiling is run's output with --ceiling.
type runWithCeiling struct {
	*loadgen.Report
	Ceiling *ceiling.Result `json:"ceiling"`
}

func (r *runWithCeiling) WriteText(w io.Writer) {
	r.Report.WriteText(w)
	fmt.Fprintln(w)
	r.Ceiling.WriteText(w)
}

func ceilingCmd() *cobra.Command {
	var (
		format     string
		runFile    string
		serverRate float64
		serverMs   float64
		opts       ceiling.Options
	)
	cmd := &cobra.Command{
		Use:   "ceiling",
		Short: "Measure the CPU cost of one enrollment's server-side cryptography and the enrollments/s it allows",
		Long: `ceiling makes one enrollment's evidence with a software TPM, then times on this
machine each step the server's cryptography takes (EK chain, MakeCredential,
quote, key certification, CSR, leaf and bundle signing, TLS 1.3 handshake, by
the CPU time of the thread doing it) and prints the sum and the ceiling it
implies on every core. With --run (a 'run -o json' report) or --server-rate /
--server-cpu-ms it prints how close the server came.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("-o %q: want text or json", format)
			}
			if runFile != "" {
				b, err := os.ReadFile(runFile)
				if err != nil {
					return err
				}
				var rep loadgen.Report
				if err := json.Unmarshal(b, &rep); err != nil {
					return fmt.Errorf("%s: %w", runFile, err)
				}
				serverRate = max(serverRate, rep.EnrollmentsPerSecond)
				serverMs = max(serverMs, rep.ServerCPUMsPerEnrollment)
			}
			opts.Progress = cmd.ErrOrStderr()
			r, err := ceiling.Measure(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if serverRate > 0 || serverMs > 0 {
				r.Compare(serverRate, serverMs)
			}
			return output(cmd.OutOrStdout(), format, r)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&runFile, "run", "", "a 'enroll-bench run -o json' report to compare with")
	fl.Float64Var(&serverRate, "server-rate", 0, "measured enrollments/s to compare with")
	fl.Float64Var(&serverMs, "server-cpu-ms", 0, "measured server CPU ms per enrollment to compare with")
	fl.DurationVar(&opts.Duration, "time", 500*time.Millisecond, "CPU time per step")
	fl.StringVarP(&format, "output", "o", "text", "text or json")
	return cmd
}

func manufacturerCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "manufacturer",
		Short: "Create (or show) the test TPM manufacturer CA whose root enrolld must trust",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := tpmsim.LoadOrCreateManufacturer(dir); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tpmsim.ManufacturerCertPath(dir))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "manufacturer CA directory (required)")
	cmd.MarkFlagRequired("dir")
	return cmd
}

// workerCmd is the hidden worker process: one software TPM serving the
// parent over stdin and stdout.
func workerCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "worker",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return loadgen.ServeWorkerStdio()
		},
	}
}

// stepCAFlags are the flags that say which step-ca to run and how.
func stepCAFlags(cmd *cobra.Command, sc *loadgen.StepCAConfig) {
	fl := cmd.Flags()
	fl.StringVar(&sc.Binary, "step-ca-bin", "", "step-ca binary (default: build --step-ca-version with go install from the Go module proxy, once, into --step-ca-cache)")
	fl.StringVar(&sc.Version, "step-ca-version", loadgen.StepCAVersion, "step-ca version to build (github.com/smallstep/certificates)")
	fl.StringVar(&sc.CacheDir, "step-ca-cache", "", "where built step-ca binaries are kept (default: the user cache directory)")
	fl.StringVar(&sc.DB, "step-ca-db", loadgen.StepCADBBadger, "step-ca database: badgerv2 (step ca init's default, in the CA directory) or none")
	fl.StringVar(&sc.Dir, "step-ca-dir", "", "directory for step-ca's configuration, keys, database and log (default: a temporary one, removed)")
}

func stepcaCmd() *cobra.Command {
	var (
		sc       loadgen.StepCAConfig
		format   string
		noVerify bool
	)
	cmd := &cobra.Command{
		Use:   "stepca",
		Short: "Measure step-ca's plain certificate signing (/1.0/sign, JWK token, no attestation) under the same load generator",
		Long: `stepca starts a step-ca (github.com/smallstep/certificates) as a separate
process on a loopback port, with a fresh root and intermediate, one JWK
provisioner and step ca init's default badgerv2 database, then has N simulated
devices, C at a time, each over its own TLS connection, post a fresh P-256 key's
CSR with a one-time token to /1.0/sign. Keys, CSRs and tokens are made before
timing. It reports signs/s, latency percentiles, errors by HTTP status, and
step-ca's CPU per sign and RSS from /proc.

Without --step-ca-bin, step-ca is built once with go install from the Go module
proxy; if that fails, the comparison is skipped with the reason (exit 0).
Use compare-stepca to measure enrolld and step-ca in the same invocation.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("-o %q: want text or json", format)
			}
			sc.Load.Verify = !noVerify
			sc.Load.Progress = cmd.ErrOrStderr()
			sc.Progress = cmd.ErrOrStderr()
			res, err := loadgen.RunStepCA(cmd.Context(), sc)
			if err != nil {
				return err
			}
			if res.Skipped != "" && format == "json" {
				fmt.Fprintf(cmd.ErrOrStderr(), "step-ca comparison skipped: %s\n", res.Skipped)
			}
			return output(cmd.OutOrStdout(), format, res)
		},
	}
	fl := cmd.Flags()
	fl.IntVarP(&sc.Load.Devices, "devices", "n", 100, "number of simulated devices (sign requests) per run")
	fl.IntVarP(&sc.Load.Concurrency, "concurrency", "c", 64, "devices in flight at once")
	fl.DurationVar(&sc.Load.Ramp, "ramp", 0, "spread device starts evenly over this time")
	fl.IntVar(&sc.Load.Retry.Attempts, "attempts", 8, "attempts per device")
	fl.DurationVar(&sc.Load.PhaseTimeout, "timeout", 10*time.Minute, "bound on each run")
	fl.DurationVar(&sc.Load.RequestTimeout, "request-timeout", 30*time.Second, "bound on each request")
	fl.IntVar(&sc.Rounds, "rounds", 1, "timed runs (fresh devices each)")
	fl.BoolVar(&noVerify, "no-verify", false, "do not verify the certificate chain each device receives")
	fl.StringVarP(&format, "output", "o", "text", "text or json")
	stepCAFlags(cmd, &sc)
	return cmd
}

func compareStepCACmd() *cobra.Command {
	var (
		cfg      loadgen.BenchConfig
		sc       loadgen.StepCAConfig
		rounds   int
		format   string
		noVerify bool
	)
	cmd := &cobra.Command{
		Use:   "compare-stepca",
		Short: "Run our full-attestation enrollment against enrolld and step-ca's plain sign in one invocation, and compare",
		Long: `compare-stepca runs, --rounds times in alternating order (ours step-ca,
step-ca ours, ...), N devices enrolling against a running enrolld (--server,
as for run) and N devices asking a step-ca it starts for a plain certificate
(as the stepca command), with the same concurrency, ramp, retries and
verification, and prints the medians side by side with the ratio ours/step-ca.

  enrolld serve --data-dir d --listen 127.0.0.1:8443 --manufacturer-roots mfr/manufacturer_ca.crt &
  enroll-bench compare-stepca --server https://localhost:8443 --root-ca d/ca/root_ca.crt \
    --manufacturer-ca mfr -n 2000 -c 32 --rounds 3

If step-ca cannot be built, ours is still measured and step-ca's part says
"step-ca comparison skipped: <reason>" (exit 0).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("-o %q: want text or json", format)
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.WorkerCommand = func() *exec.Cmd { return exec.Command(exe, "worker") }
			cfg.Stderr = cmd.ErrOrStderr()
			cfg.Run.Verify = !noVerify
			cfg.Run.Progress = cmd.ErrOrStderr()
			c, err := loadgen.CompareStepCA(cmd.Context(), cfg, sc, rounds)
			if err != nil {
				return err
			}
			return output(cmd.OutOrStdout(), format, c)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.ServerURL, "server", "https://localhost:8443", "enrolld: https://HOST:PORT, or mqtts://HOST:PORT for MQTT through its broker")
	fl.IntVar(&rounds, "rounds", 1, "runs of each, alternating order; medians are reported")
	benchFlags(cmd, &cfg, &noVerify, &format)
	stepCAFlags(cmd, &sc)
	return cmd
}

func etcdCmd() *cobra.Command {
	var dir string
	var members int
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "Run an embedded etcd cluster on loopback ports until interrupted (for trying and measuring enrolld --store etcd://)",
		Long: `etcd runs N etcd members (go.etcd.io/etcd/server/v3/embed, the same code as the etcd
binary) in this process on free loopback ports, data in --dir, and prints the
store URL for enrolld --store. It is for trying several enrolld on one machine
and for benchmarks; production runs the etcd binary (see README, "Scaling out").`,
		Example: `  enroll-bench etcd --members 3 --dir /tmp/etcd &
  enrolld serve --store etcd://127.0.0.1:PORT1,127.0.0.1:PORT2,127.0.0.1:PORT3/edgeenroll ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if members < 1 || members > 7 {
				return fmt.Errorf("--members %d: want 1 to 7", members)
			}
			c, err := etcdtest.Start(dir, members)
			if err != nil {
				return err
			}
			defer c.Close()
			fmt.Fprintln(cmd.OutOrStdout(), c.StoreURL("edgeenroll"))
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "data directory of the members (required)")
	cmd.Flags().IntVar(&members, "members", 3, "number of members")
	cmd.MarkFlagRequired("dir")
	return cmd
}
