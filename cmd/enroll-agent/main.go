// Command enroll-agent is the device agent: it proves the device's TPM
// identity to enrolld and keeps the resulting certificate and config.
//
// Exit codes: 0 success, 1 failure (the message says what to fix), 2 usage.
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
	"syscall"
	"time"

	"github.com/edgeenroll/edgeenroll/internal/atomicfile"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/device/tpmdev"
	"github.com/edgeenroll/edgeenroll/pki"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := rootCmd()
	cmd.SetContext(ctx)
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}

type agentFlags struct {
	server      string
	rootCA      string
	tpm         string
	dataDir     string
	eventLog    string
	trustDomain string
	timeout     time.Duration
	attempts    int
}

func (f *agentFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.server, "server", "https://localhost:8443", "enrollment server base URL")
	fl.StringVar(&f.rootCA, "root-ca", "", "enrollment root CA certificate (PEM) installed on the device (required)")
	fl.StringVar(&f.tpm, "tpm", tpmdev.DefaultDevice, "TPM to use: a device path, swtpm:HOST:PORT, or simulator:DIR in builds with -tags simulator")
	fl.StringVar(&f.dataDir, "data-dir", "/var/lib/enroll-agent", "agent state directory (cache, certificate, config); created 0700")
	fl.StringVar(&f.eventLog, "event-log", tpmdev.DefaultEventLogPath, "TCG event log sent with quotes")
	fl.StringVar(&f.trustDomain, "trust-domain", pki.DefaultOptions().TrustDomain, "server trust domain expected in the device certificate")
	fl.DurationVar(&f.timeout, "timeout", 2*time.Minute, "overall time limit")
	fl.IntVar(&f.attempts, "attempts", device.DefaultRetryPolicy.Attempts, "attempts on transient failures (network, 5xx, 429)")
}

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "enroll-agent",
		Short:         "Enroll this device with its TPM identity",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.AddCommand(enrollCmd(), whoamiCmd(), identityCmd())
	addSimulatorCommands(root)
	return root
}

func enrollCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Enroll once: attest, receive certificate and config bundle, check them with an mTLS call",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			a, err := openAgent(ctx, &f)
			if err != nil {
				return err
			}
			defer a.Close()
			res, err := a.Enroll(ctx, device.RetryPolicy{Attempts: f.attempts, Base: device.DefaultRetryPolicy.Base, Max: device.DefaultRetryPolicy.Max})
			if err != nil {
				return err
			}
			certPath, configPath, err := export(f.dataDir, res)
			if err != nil {
				return err
			}
			who, err := a.Whoami(ctx)
			if err != nil {
				return fmt.Errorf("mTLS call with the new certificate: %w", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "enrolled device %s\n", res.DeviceID)
			fmt.Fprintf(out, "  certificate: %s (serial %s, expires %s; key is in the TPM)\n", certPath, res.Leaf.SerialNumber.Text(16), res.Leaf.NotAfter.UTC().Format(time.RFC3339))
			fmt.Fprintf(out, "  config:      %s (bundle version %d, signature verified)\n", configPath, res.Bundle.Version)
			fmt.Fprintf(out, "  cache:       %s\n", cachePath(f.dataDir))
			fmt.Fprintf(out, "mTLS call to %s/v1/whoami succeeded: server sees device %s, certificate %s\n", f.server, who.DeviceID, who.Serial)
			return nil
		},
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
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			a, err := openAgent(ctx, &f)
			if err != nil {
				return err
			}
			defer a.Close()
			who, err := a.Whoami(ctx)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(who)
		},
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

func cachePath(dataDir string) string { return filepath.Join(dataDir, "agent.db") }

func openAgent(ctx context.Context, f *agentFlags) (*device.Agent, error) {
	if f.rootCA == "" {
		return nil, errors.New("--root-ca is required: the enrollment root certificate (enrolld prints its path at start)")
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
	return device.New(ctx, device.Config{
		ServerURL:    f.server,
		Roots:        roots,
		TrustDomain:  f.trustDomain,
		TPM:          tpm,
		EventLogPath: f.eventLog,
		CachePath:    cachePath(f.dataDir),
		Hostname:     host,
		Logger:       slog.New(slog.NewJSONHandler(os.Stderr, nil)),
	})
}

func openTPM(ctx context.Context, spec string) (transport.TPMCloser, error) {
	if t, ok, err := openSimulator(spec); ok {
		return t, err
	}
	return tpmdev.Open(ctx, spec)
}

// export writes the public certificate chain (PEM) and the verified config
// payload next to the cache, for other programs on the device.
func export(dataDir string, res *device.Result) (certPath, configPath string, err error) {
	var chain []byte
	for _, c := range res.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	certPath = filepath.Join(dataDir, "device.crt")
	if err := atomicfile.Write(certPath, chain, 0o644); err != nil {
		return "", "", err
	}
	configPath = filepath.Join(dataDir, "config.json")
	if err := atomicfile.Write(configPath, res.Bundle.Config, 0o644); err != nil {
		return "", "", err
	}
	return certPath, configPath, nil
}
