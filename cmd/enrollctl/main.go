// Command enrollctl is the operator and factory-line CLI for enrolld's
// admin API. It authenticates with an operator certificate; enrolld writes
// the first one into <data-dir>/admin on its first start.
//
// Exit codes: 0 success, 1 failure (the message says what to fix).
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/api"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := rootCmd().ExecuteContext(ctx); err != nil {
		os.Exit(1)
	}
}

type globalFlags struct {
	server   string
	adminDir string
	output   string
	timeout  time.Duration
}

func rootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{Use: "enrollctl", Short: "Operate enrolld: pre-register devices, list them", SilenceUsage: true}
	pf := root.PersistentFlags()
	pf.StringVar(&g.server, "server", "https://localhost:8443", "enrolld base URL")
	pf.StringVar(&g.adminDir, "admin-dir", "enrolld-data/admin", "directory with ca.crt, operator.crt and operator.key (enrolld writes it on first start)")
	pf.StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	pf.DurationVar(&g.timeout, "timeout", 30*time.Second, "time limit for the call")
	devices := &cobra.Command{Use: "devices", Short: "Inspect enrolled devices"}
	devices.AddCommand(listCmd(g))
	root.AddCommand(preregisterCmd(g), devices)
	return root
}

func preregisterCmd(g *globalFlags) *cobra.Command {
	var ekHash, ekCert, ekPub, serial, group string
	cmd := &cobra.Command{
		Use:   "preregister",
		Short: "Register one device identity (EK) before it enrolls",
		Example: `  enrollctl preregister --ek-cert ek.pem --serial SN123 --group line-a
  enrollctl preregister --ek-hash 3f2a... --serial SN124`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			id, err := deviceIDFrom(ekHash, ekCert, ekPub)
			if err != nil {
				return err
			}
			req := api.PreregisterRequest{Devices: []api.Preregistration{{DeviceID: id, Serial: serial, Group: group}}}
			if err := req.Validate(); err != nil {
				return err
			}
			var resp api.PreregisterResponse
			if err := call(cmd.Context(), g, http.MethodPost, api.PathAdminPreregistrations, &req, &resp); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pre-registered device %s\n", id)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&ekHash, "ek-hash", "", "device ID: hex SHA-256 of the EK public key (PKIX DER)")
	fl.StringVar(&ekCert, "ek-cert", "", "EK certificate file (PEM or DER)")
	fl.StringVar(&ekPub, "ek-pub", "", "EK public key file (PEM or DER, PKIX)")
	fl.StringVar(&serial, "serial", "", "device serial number")
	fl.StringVar(&group, "group", "", "device group")
	cmd.MarkFlagsOneRequired("ek-hash", "ek-cert", "ek-pub")
	cmd.MarkFlagsMutuallyExclusive("ek-hash", "ek-cert", "ek-pub")
	return cmd
}

func listCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List enrolled devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list api.DeviceList
			if err := call(cmd.Context(), g, http.MethodGet, api.PathAdminDevices, nil, &list); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch g.output {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			case "table":
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "DEVICE ID\tSTATUS\tADMISSION\tSERIAL\tGROUP\tCERT EXPIRES\tBUNDLE\tENROLLMENTS")
				for _, d := range list.Devices {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", d.DeviceID, d.Status, d.Admission, d.Serial, d.Group,
						d.CertNotAfter.UTC().Format(time.RFC3339), d.BundleVersion, d.Enrollments)
				}
				return tw.Flush()
			default:
				return fmt.Errorf("--output must be table or json, got %q", g.output)
			}
		},
	}
}

// deviceIDFrom computes the device ID from whichever EK form was given.
func deviceIDFrom(hash, certFile, pubFile string) (string, error) {
	switch {
	case hash != "":
		if !api.ValidDeviceID(hash) {
			return "", fmt.Errorf("--ek-hash must be 64 lowercase hex characters (SHA-256 of the EK public key), got %q", hash)
		}
		return hash, nil
	case certFile != "":
		der, err := readPEMOrDER(certFile, "CERTIFICATE")
		if err != nil {
			return "", err
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			// TCG EK certificates parse in Go; anything else is not one.
			return "", fmt.Errorf("--ek-cert %s: %w", certFile, err)
		}
		return sha256Hex(c.RawSubjectPublicKeyInfo), nil
	default:
		der, err := readPEMOrDER(pubFile, "PUBLIC KEY")
		if err != nil {
			return "", err
		}
		if _, err := x509.ParsePKIXPublicKey(der); err != nil {
			return "", fmt.Errorf("--ek-pub %s is not a PKIX public key: %w", pubFile, err)
		}
		return sha256Hex(der), nil
	}
}

func readPEMOrDER(path, blockType string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != blockType {
			return nil, fmt.Errorf("%s holds a PEM %q block, want %q", path, blk.Type, blockType)
		}
		return blk.Bytes, nil
	}
	return b, nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// call sends one admin request with the operator certificate.
func call(ctx context.Context, g *globalFlags, method, path string, req, resp any) error {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	client, err := adminClient(g.adminDir)
	if err != nil {
		return err
	}
	var body io.Reader
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, g.server+path, body)
	if err != nil {
		return err
	}
	if req != nil {
		hreq.Header.Set("Content-Type", api.ContentTypeJSON)
	}
	hresp, err := client.Do(hreq)
	if err != nil {
		return fmt.Errorf("calling enrolld at %s: %w", g.server, err)
	}
	defer hresp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(hresp.Body, 64<<20))
	if err != nil {
		return err
	}
	if hresp.StatusCode != http.StatusOK {
		var ae api.Error
		if json.Unmarshal(raw, &ae) == nil && ae.Code != "" {
			return &ae
		}
		return fmt.Errorf("enrolld answered HTTP %d", hresp.StatusCode)
	}
	return json.Unmarshal(raw, resp)
}

func adminClient(dir string) (*http.Client, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("reading the server CA (--admin-dir): %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("ca.crt in --admin-dir holds no PEM certificate")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "operator.crt"), filepath.Join(dir, "operator.key"))
	if err != nil {
		return nil, fmt.Errorf("loading the operator certificate (--admin-dir): %w", err)
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
	}}, nil
}
