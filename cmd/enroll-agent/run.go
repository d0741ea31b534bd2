package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/device/supervise"
)

func runCmd(processStart time.Time) *cobra.Command {
	var f agentFlags
	var (
		readyFile, metricsListen, metricsTextfile string
		o                                         device.RunOptions
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Keep the device enrolled: ready from the cache at boot, enroll when needed, renew before expiry",
		Long: `run is the long-running mode for a service manager.

At start it checks its cache: a valid certificate chain and a verified config
bundle make the device ready at once, with no network. Otherwise it enrolls,
retrying transient failures with capped exponential backoff and full jitter
and honouring the server's Retry-After. At --renew-at of the certificate's
lifetime (with jitter) it re-attests for a new certificate; a failed renewal
keeps the old certificate until it expires.

While ready, --ready-file exists and holds the device ID, certificate expiry
and bundle version. The status file (<data-dir>/status.json) always holds the
current state, read by "enroll-agent status". Under systemd (NOTIFY_SOCKET),
READY=1 is sent when the device first becomes ready. SIGHUP renews now
("enroll-agent refresh" or "systemctl reload enroll-agent").`,
		Example: `  enroll-agent run --server https://enroll.example:8443 --root-ca /etc/enroll-agent/root_ca.crt \
    --tpm /dev/tpmrm0 --data-dir /var/lib/enroll-agent --ready-file /run/enroll-agent/ready`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			o.StartedAt = processStart
			reg := prometheus.NewRegistry()
			log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
			a, err := openAgent(ctx, &f, func(c *device.Config) { c.Registerer = reg; c.Logger = log })
			if err != nil {
				return err
			}
			defer a.Close()

			var ready atomic.Bool
			if metricsListen != "" {
				stop, err := serveLocal(metricsListen, reg, &ready, log)
				if err != nil {
					return err
				}
				defer stop()
			}
			rep := &supervise.Reporter{
				ReadyPath:    readyFile,
				StatusPath:   statusPath(f.dataDir),
				NotifySocket: os.Getenv("NOTIFY_SOCKET"),
				OnError:      func(err error) { log.Error("reporting status", "err", err) },
			}
			var exported string
			o.OnStatus = func(s device.Status) {
				ready.Store(s.Ready)
				if key := fmt.Sprintf("%s/%d", s.CertSerial, s.BundleVersion); s.Ready && key != exported {
					if _, _, err := a.ExportFiles(f.dataDir); err != nil {
						log.Error("exporting certificate and config", "err", err)
					} else {
						exported = key
					}
				}
				rep.Report(s)
				if metricsTextfile != "" {
					if err := prometheus.WriteToTextfile(metricsTextfile, reg); err != nil {
						log.Error("writing metrics textfile", "err", err)
					}
				}
			}
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			refresh := make(chan struct{}, 1)
			go func() {
				for range hup {
					select {
					case refresh <- struct{}{}:
					default:
					}
				}
			}()
			o.Refresh = refresh
			err = a.Run(ctx, o)
			rep.Report(device.Status{DeviceID: a.DeviceID(), Phase: "stopped", PID: os.Getpid(), StartedAt: time.Now()})
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		},
	}
	f.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&readyFile, "ready-file", "", "file that exists while the device is ready (default <data-dir>/ready.json)")
	fl.StringVar(&metricsListen, "metrics-listen", "", "local address serving /metrics (Prometheus) and /healthz (200 when ready), e.g. 127.0.0.1:9721")
	fl.StringVar(&metricsTextfile, "metrics-textfile", "", "also write metrics to this file (node_exporter textfile collector)")
	fl.Float64Var(&o.RenewAt, "renew-at", 2.0/3, "renew at this fraction of the certificate lifetime")
	fl.Float64Var(&o.RenewJitter, "renew-jitter", 0.1, "spread renewals by up to ±half this fraction of the lifetime")
	fl.DurationVar(&o.Retry.Base, "retry-base", time.Second, "first retry backoff cap")
	fl.DurationVar(&o.Retry.Max, "retry-max", 5*time.Minute, "largest retry backoff")
	fl.DurationVar(&o.AttemptTimeout, "attempt-timeout", 2*time.Minute, "time limit of one enrollment attempt")
	fl.DurationVar(&o.PermanentBackoff, "refused-backoff", time.Hour, "wait after a permanent refusal (untrusted, denied, revoked) before asking again")
	cmd.PreRun = func(*cobra.Command, []string) {
		if readyFile == "" {
			readyFile = filepath.Join(f.dataDir, "ready.json")
		}
	}
	return cmd
}

// serveLocal serves metrics and a readiness probe on a local address.
func serveLocal(addr string, reg *prometheus.Registry, ready *atomic.Bool, log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("local metrics endpoint", "err", err)
		}
	}()
	return func() { srv.Close() }, nil
}

func statusCmd() *cobra.Command {
	var dataDir, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running agent's state (exit 0 when ready, 3 when not)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := supervise.ReadStatus(statusPath(dataDir))
			if errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("no status in %s: has enroll-agent run started with this --data-dir?", dataDir)
			} else if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(s); err != nil {
					return err
				}
			case "table":
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "device\t%s\nready\t%t\nphase\t%s\n", s.DeviceID, s.Ready, s.Phase)
				if s.Reason != "" {
					fmt.Fprintf(tw, "reason\t%s\n", s.Reason)
				}
				if !s.CertNotAfter.IsZero() {
					fmt.Fprintf(tw, "certificate\t%s, expires %s\n", s.CertSerial, s.CertNotAfter.UTC().Format(time.RFC3339))
				}
				if !s.NextRenewal.IsZero() {
					fmt.Fprintf(tw, "next renewal\t%s\n", s.NextRenewal.UTC().Format(time.RFC3339))
				}
				fmt.Fprintf(tw, "bundle version\t%d\nattempts this boot\t%d\n", s.BundleVersion, s.Attempts)
				if s.LastError != "" {
					fmt.Fprintf(tw, "last error\t%s: %s\n", s.LastErrorCode, s.LastError)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			default:
				return &exitError{code: exitUsage, err: fmt.Errorf("-o must be table or json, got %q", output)}
			}
			if !s.Ready {
				return &exitError{code: exitNotReady, err: errors.New("device is not ready")}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "/var/lib/enroll-agent", "the agent's state directory")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func refreshCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "refresh",
		Short: "Ask the running agent to re-attest and fetch its config now (sends it SIGHUP)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := supervise.ReadStatus(statusPath(dataDir))
			if err != nil {
				return fmt.Errorf("finding the running agent: %w", err)
			}
			if s.PID <= 0 || s.Phase == "stopped" {
				return errors.New("the agent is not running")
			}
			if err := syscall.Kill(s.PID, syscall.SIGHUP); err != nil {
				return fmt.Errorf("signalling agent pid %d: %w", s.PID, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "asked agent %d to refresh; watch enroll-agent status\n", s.PID)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "/var/lib/enroll-agent", "the agent's state directory")
	return cmd
}
