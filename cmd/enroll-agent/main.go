// Command enroll-agent is the device agent: it proves the device's TPM
// identity to enrolld and keeps the resulting certificate and config.
//
// Exit codes:
//
//	0  success; for run, a clean stop on SIGTERM/SIGINT
//	1  failure: the message on stderr says what to fix
//	2  usage error
//	3  status: the device is not ready
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/device/tpmdev"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Exit codes.
const (
	exitFailure  = 1
	exitUsage    = 2
	exitNotReady = 3
)

// exitError carries an exit code other than exitFailure.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	start := time.Now() // for time-to-ready
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := rootCmd(start)
	cmd.SetContext(ctx)
	if err := cmd.Execute(); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(exitFailure)
	}
}

type agentFlags struct {
	server         string
	rootCA         string
	tpm            string
	dataDir        string
	eventLog       string
	trustDomain    string
	timeout        time.Duration
	requestTimeout time.Duration
	attempts       int
	// mqttDeviceServer is the broker listener for certified devices when
	// it differs from --server (mosquitto: a mutual-TLS listener).
	mqttDeviceServer string
}

func (f *agentFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.server, "server", "https://localhost:8443", "enrollment server: https://HOST:PORT, or mqtts://HOST:PORT for its MQTT broker")
	fl.StringVar(&f.rootCA, "root-ca", "", "enrollment root CA certificate (PEM) installed on the device (required)")
	fl.StringVar(&f.tpm, "tpm", tpmdev.DefaultDevice, "TPM to use: a device path, swtpm:HOST:PORT, or simulator:DIR in builds with -tags simulator")
	fl.StringVar(&f.dataDir, "data-dir", "/var/lib/enroll-agent", "agent state directory (cache, certificate, config, status); created 0700")
	fl.StringVar(&f.eventLog, "event-log", tpmdev.DefaultEventLogPath, "TCG event log sent with quotes")
	fl.StringVar(&f.trustDomain, "trust-domain", pki.DefaultTrustDomain, "server trust domain expected in the device certificate")
	fl.DurationVar(&f.timeout, "timeout", 2*time.Minute, "overall time limit (one-shot commands)")
	fl.DurationVar(&f.requestTimeout, "request-timeout", 30*time.Second, "time limit of each request to the server")
	fl.StringVar(&f.mqttDeviceServer, "mqtt-device-server", "", "with an mqtts:// --server: the broker's mutual-TLS listener for certified devices (default: --server)")
	fl.IntVar(&f.attempts, "attempts", device.DefaultRetryPolicy.Attempts, "attempts on transient failures (network, 5xx, 429, pending approval)")
}

func rootCmd(start time.Time) *cobra.Command {
	root := &cobra.Command{
		Use:          "enroll-agent",
		Short:        "Enroll this device with its TPM identity and keep it enrolled",
		SilenceUsage: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{code: exitUsage, err: err} })
	root.AddCommand(runCmd(start), enrollCmd(), whoamiCmd(), identityCmd(), statusCmd(), refreshCmd())
	addSimulatorCommands(root)
	return root
}

func enrollCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Enroll once: attest, receive certificate and config bundle, check them with an mTLS call",
		Args:  cobra.NoArgs,
		RunE: f.withAgent(func(ctx context.Context, cmd *cobra.Command, a *device.Agent) error {
			res, err := a.Enroll(ctx, device.RetryPolicy{Attempts: f.attempts, Base: device.DefaultRetryPolicy.Base, Max: device.DefaultRetryPolicy.Max})
			if err != nil {
				return err
			}
			certPath, configPath, err := a.ExportFiles(f.dataDir)
			if err != nil {
				return err
			}
			who, err := a.Whoami(ctx)
			if err != nil {
				return fmt.Errorf("mTLS call with the new certificate: %w", err)
			}
			e, err := a.Enrollment()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "enrolled device %s\n", res.DeviceID)
			fmt.Fprintf(out, "  certificate: %s (serial %s, expires %s; key is in the TPM)\n", certPath, res.Leaf.SerialNumber.Text(16), res.Leaf.NotAfter.UTC().Format(time.RFC3339))
			fmt.Fprintf(out, "  config:      %s (bundle version %d, signature verified)\n", configPath, e.BundleVersion)
			fmt.Fprintf(out, "  cache:       %s\n", cachePath(f.dataDir))
			fmt.Fprintf(out, "mTLS call to %s (whoami) succeeded: server sees device %s, certificate %s\n", f.server, who.DeviceID, who.Serial)
			return nil
		}),
	}
	f.register(cmd)
	return cmd
}

func whoamiCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Call the server over mTLS with the cached certificate and TPM key",
		Args:  cobra.NoArgs,
		RunE: f.withAgent(func(ctx context.Context, cmd *cobra.Command, a *device.Agent) error {
			who, err := a.Whoami(ctx)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(who)
		}),
	}
	f.register(cmd)
	return cmd
}

func identityCmd() *cobra.Command {
	var f agentFlags
	var ekCertOut string
	cmd := &cobra.Command{
		Use:   "identity",
		Short: "Print this device's ID (SHA-256 of the EK public key) for pre-registration; --ek-cert-out saves the EK certificate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			tpm, err := openTPM(ctx, f.tpm)
			if err != nil {
				return err
			}
			id, ekCert, err := device.ReadIdentity(tpm)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), id)
			if ekCertOut != "" {
				if ekCert == nil {
					return errors.New("this TPM has no EK certificate; pre-register it by device ID")
				}
				return atomicfile.Write(ekCertOut, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ekCert}), 0o644)
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&ekCertOut, "ek-cert-out", "", "write the EK certificate (PEM) to this file")
	return cmd
}

// withAgent runs fn with an open agent under the --timeout limit.
func (f *agentFlags) withAgent(fn func(ctx context.Context, cmd *cobra.Command, a *device.Agent) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
		defer cancel()
		a, err := openAgent(ctx, f, nil)
		if err != nil {
			return err
		}
		defer a.Close()
		return fn(ctx, cmd, a)
	}
}

func cachePath(dataDir string) string  { return filepath.Join(dataDir, "agent.db") }
func statusPath(dataDir string) string { return filepath.Join(dataDir, "status.json") }

func openAgent(ctx context.Context, f *agentFlags, cfg func(*device.Config)) (*device.Agent, error) {
	if f.rootCA == "" {
		return nil, &exitError{code: exitUsage, err: errors.New("--root-ca is required: the enrollment root certificate (enrolld prints its path at start)")}
	}
	pemBytes, err := os.ReadFile(f.rootCA)
	if err != nil {
		return nil, fmt.Errorf("reading --root-ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("--root-ca %s holds no PEM certificate", f.rootCA)
	}
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating --data-dir: %w", err)
	}
	tpm, err := openTPM(ctx, f.tpm)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	c := device.Config{
		ServerURL:      f.server,
		Roots:          roots,
		TrustDomain:    f.trustDomain,
		TPM:            tpm,
		EventLogPath:   f.eventLog,
		CachePath:      cachePath(f.dataDir),
		Hostname:       host,
		RequestTimeout: f.requestTimeout,
		Logger:         slog.New(slog.NewJSONHandler(os.Stderr, nil)),
	}
	if strings.HasPrefix(f.server, "mqtts://") {
		c.Transport = func(certs device.CertificateSource) (device.Transport, error) {
			return device.NewMQTTTransport(f.server, f.mqttDeviceServer, roots, certs)
		}
	}
	if cfg != nil {
		cfg(&c)
	}
	return device.New(ctx, c)
}

func openTPM(ctx context.Context, spec string) (transport.TPMCloser, error) {
	if t, ok, err := openSimulator(spec); ok {
		return t, err
	}
	return tpmdev.Open(ctx, spec)
}
