// Command enrolld is the enrollment server.
//
// Exit codes: 0 clean shutdown, 1 failure (the message says what to fix).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/daemon"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/pki/stepca"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{Use: "enrolld", Short: "TPM-attested enrollment server", SilenceUsage: true}
	root.AddCommand(serveCmd(), brokerCertCmd(), caCmd())
	root.SetContext(ctx)
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}

// defaultGOGC is enrolld's GC target percentage (--gogc). The live heap is
// small (tens of MiB) and every enrollment allocates ~150 KiB, so at Go's
// default of 100 the collector runs often: ~10% of the server's CPU under
// enroll-bench load, against ~2% at 400.
const defaultGOGC = 400

// defaultMemoryLimitMiB is enrolld's soft memory limit (--memory-limit-mib):
// with GOGC at 400 a boot storm's 10,000 open connections let the heap
// grow to ~1 GiB between collections; under this limit the collector runs
// sooner instead (measured: RSS peak 442 MiB at a 384 MiB limit, for ~4%
// more CPU per enrollment during the storm, none at ordinary load).
const defaultMemoryLimitMiB = 512

func serveCmd() *cobra.Command {
	var cfg daemon.Config
	var logLevel string
	var gcPercent int
	var memLimitMiB int64
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve enrollment over HTTPS; creates the CA in --data-dir on first start",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			// The GOGC environment variable wins unless --gogc is given.
			if cmd.Flags().Changed("gogc") || os.Getenv("GOGC") == "" {
				debug.SetGCPercent(gcPercent)
			}
			if cmd.Flags().Changed("memory-limit-mib") || os.Getenv("GOMEMLIMIT") == "" {
				if memLimitMiB > 0 {
					debug.SetMemoryLimit(memLimitMiB << 20)
				}
			}
			return daemon.Run(cmd.Context(), cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.DataDir, "data-dir", "enrolld-data", "state directory: CA keys (0600), store; created 0700")
	fl.StringVar(&cfg.Listen, "listen", "127.0.0.1:8443", "HTTPS listen address")
	fl.StringVar(&cfg.MQTTBroker, "mqtt-broker", "", "serve enrollment through an external MQTT broker: mqtts://HOST:PORT of its mutual-TLS listener (see deploy/mosquitto)")
	fl.StringVar(&cfg.MQTTBrokerCA, "mqtt-broker-ca", "", "PEM CA of the external broker's certificate (default: the enrollment root)")
	fl.StringVar(&cfg.MQTTListen, "mqtt-listen", "", "run the embedded MQTT broker (TLS) on this address, e.g. 127.0.0.1:8883; devices use --server mqtts://HOST:PORT")
	fl.StringSliceVar(&cfg.Hostnames, "hostname", nil, "DNS names or IPs for the server certificate (default localhost, 127.0.0.1, ::1)")
	fl.StringSliceVar(&cfg.ManufacturerRoots, "manufacturer-roots", nil, "PEM files of TPM manufacturer EK roots to trust (repeatable); without any, only pre-registered devices enroll")
	fl.StringVar(&cfg.TrustDomain, "trust-domain", pki.DefaultOptions().TrustDomain, "trust domain in device certificate URI SANs")
	fl.DurationVar(&cfg.LeafLifetime, "cert-lifetime", pki.DefaultLeafLifetime, "device certificate lifetime, between "+pki.MinLeafLifetime.String()+" and "+pki.MaxLeafLifetime.String())
	fl.DurationVar(&cfg.SessionTTL, "session-ttl", api.DefaultSessionTTL, "time a device has between begin and finish")
	fl.StringVar(&cfg.BundleConfigFile, "bundle-config", "", "JSON object file sent to devices as their signed config (default {})")
	fl.Uint64Var(&cfg.BundleVersion, "bundle-version", 1, "version of --bundle-config; raise it when the config changes")
	fl.StringVar(&cfg.DefaultGroup, "default-group", "default", "group of devices that were not pre-registered into one")
	fl.StringVar(&cfg.DefaultAdmission, "default-admission", api.AdmissionAuto, "admission policy of groups without a record (`enrollctl groups set`): auto, manual or deny")
	closed := fl.Bool("closed", true, "closed mode: a device neither pre-registered nor chained to a trusted manufacturer root is refused and leaves no record; --closed=false lets it wait as pending for an operator")
	fl.IntVar(&cfg.MaxPending, "max-pending", api.DefaultMaxPending, "cap on pending device records; beyond it new devices are told to retry later")
	fl.DurationVar(&cfg.PendingTTL, "pending-ttl", api.DefaultPendingTTL, "how long a pending device waits for an operator before its record expires")
	fl.DurationVar(&cfg.PendingRetryAfter, "pending-retry-after", api.DefaultPendingRetryAfter, "Retry-After given to a pending device")
	fl.DurationVar(&cfg.CRLLifetime, "crl-lifetime", enrollserver.DefaultCRLLifetime, "nextUpdate - thisUpdate of the CRL (GET /v1/crl, <data-dir>/crl.der); re-signed every quarter of it and at every revocation")
	fl.IntSliceVar(&cfg.PCRs, "pcrs", enrollserver.DefaultPCRs, "SHA-256 PCRs every enrollment quotes; must include the firmware PCRs 0-7, and every PCR devices' event logs measure (a group's --require-pcrs are added)")
	fl.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fl.Int64Var(&memLimitMiB, "memory-limit-mib", defaultMemoryLimitMiB, "soft memory limit of the Go runtime in MiB (as GOMEMLIMIT, which applies when this flag is not given; 0: none): past it the collector runs more often rather than let the heap grow; a boot storm's open connections are what it bounds")
	fl.IntVar(&gcPercent, "gogc", defaultGOGC, "Go GC target percentage (as GOGC, which applies when this flag is not given; -1 turns the collector off): the heap may grow this much beyond the live heap between collections. 400 (the default) spends ~2% of the CPU on GC instead of ~10% at Go's 100, for ~20 MiB more RSS under load")
	fl.BoolVar(&cfg.DurableSessions, "durable-sessions", false, "keep begun, unfinished enrollment sessions in the store file (an fsync at every begin) instead of in memory; in memory, devices caught between begin and finish by a restart begin again (finished enrollments are always durable)")
	verdicts := fl.Int("verdict-memo", enrollserver.DefaultVerdictMemoSize, "EK certificate and AK creation verdicts remembered, of each, so a device attesting again with the same evidence (a renewal) is not verified twice for the same bytes (~0.9 KiB per device); 0 remembers none")
	http2 := fl.Bool("http2", false, "offer HTTP/2 (ALPN h2) besides HTTP/1.1. Off by default: a device keeps one connection for begin and finish either way, and HTTP/2 connection setup costs 0.1-0.2 ms of server CPU per enrollment")
	fl.StringVar(&cfg.TLSKeyExchange, "tls-key-exchange", daemon.TLSKeyExchangeHybrid, "TLS 1.3 key exchange: hybrid (post-quantum X25519MLKEM768 preferred, X25519 and NIST curves accepted), x25519 (no post-quantum hybrid: ~115-150 µs less server CPU per full handshake), or p256 (P-256 only; Go clients need a HelloRetryRequest)")
	fl.StringVar(&cfg.PprofListen, "pprof-listen", "", "serve Go runtime profiles (net/http/pprof, plain HTTP, no authentication) on this loopback address, e.g. 127.0.0.1:6060; off by default")
	fl.StringVar(&cfg.Issuer.Kind, "issuer", daemon.IssuerEmbedded, "who issues device certificates: embedded (enrolld's CA) or stepca (an existing step-ca; see --stepca-*); bundles are always signed by enrolld's CA")
	fl.StringVar(&cfg.Issuer.StepCA.URL, "stepca-url", "", "https://HOST:PORT of the step-ca (HOST must be one of its dnsNames)")
	fl.StringVar(&cfg.Issuer.StepCA.RootFile, "stepca-root", "", "PEM root certificate of the step-ca; devices must trust it too")
	fl.StringVar(&cfg.Issuer.StepCA.Provisioner, "stepca-provisioner", "", "name of the step-ca's JWK or X5C provisioner enrolld signs one-time tokens for")
	fl.StringVar(&cfg.Issuer.StepCA.ProvisionerKeyFile, "stepca-provisioner-key", "", "a JWK provisioner's private key: a JWK file, usually encrypted (step crypto jwk create); excludes --stepca-x5c-cert")
	fl.StringVar(&cfg.Issuer.StepCA.X5CCertFile, "stepca-x5c-cert", "", "for an X5C provisioner: PEM certificate chain (leaf first) that verifies to the provisioner's roots; device certificates end no later than its leaf")
	fl.StringVar(&cfg.Issuer.StepCA.X5CKeyFile, "stepca-x5c-key", "", "PEM private key of --stepca-x5c-cert's leaf, encrypted with --stepca-provisioner-password-file or not")
	fl.StringVar(&cfg.Issuer.StepCA.ProvisionerPasswordFile, "stepca-provisioner-password-file", "", "file holding the password of --stepca-provisioner-key or --stepca-x5c-key")
	fl.DurationVar(&cfg.Issuer.StepCA.Timeout, "stepca-timeout", stepca.DefaultTimeout, "bound on each call to the step-ca")
	caKeyFlags(fl, &cfg.Issuer)
	// Only serve signs CRLs, so only serve takes the retired keys.
	fl.StringArrayVar(&cfg.Issuer.RetiredIntermediateKeyURIs, "retired-intermediate-key-uri", nil, "KMS key of an intermediate that ca rotate-intermediate replaced (repeatable), so that its CRL is signed until its certificates expire; a retired key file stays in <data-dir>/ca/archive and needs no flag")
	fl.IntVar(&cfg.Admission.Slots, "max-in-flight", 0, "enrollment requests (begin, finish; HTTPS and MQTT together) worked on at once (default 2 per core, at least 4); more wait in a bounded priority queue (renewals first), beyond it clients are told busy with a Retry-After")
	fl.IntVar(&cfg.Admission.MaxQueue, "max-queue", 0, "enrollment requests waiting for a slot (default 64 per slot)")
	fl.Float64Var(&cfg.Admission.DeviceRate, "rate-per-device", 0, "requests per second one device (its certificate or MQTT client ID) may make (default 1, burst 10)")
	fl.Float64Var(&cfg.Admission.AddressRate, "rate-per-address", 0, "requests per second one network address may make without a device certificate (default 500, burst 1000: one address may be a site's NAT); a load generator on one address needs more")
	fl.IntVar(&cfg.Admission.AddressBurst, "burst-per-address", 0, "token bucket size of --rate-per-address (default 1000)")
	fl.StringVar(&cfg.Store.URL, "store", "", "shared store for several enrolld: etcd://HOST:PORT[,HOST:PORT...]/PREFIX (etcds:// for TLS); default bbolt in --data-dir for one server. Servers sharing a store must share the CA (enrolld ca init)")
	fl.StringVar(&cfg.Store.CAFile, "etcd-ca", "", "PEM CA of the etcd members' certificates (etcds://; default the system roots)")
	fl.StringVar(&cfg.Store.CertFile, "etcd-cert", "", "PEM client certificate enrolld presents to etcd (etcds://)")
	fl.StringVar(&cfg.Store.KeyFile, "etcd-key", "", "PEM key of --etcd-cert")
	cmd.PreRun = func(*cobra.Command, []string) {
		cfg.OpenMode, cfg.DisableHTTP2 = !*closed, !*http2
		cfg.VerdictMemoSize = *verdicts
		if *verdicts <= 0 {
			cfg.VerdictMemoSize = -1 // none, where the server's 0 means its default
		}
	}
	return cmd
}

// caKeyFlags are the flags naming CA keys held in a KMS.
func caKeyFlags(fl *pflag.FlagSet, c *daemon.IssuerConfig) {
	fl.StringVar(&c.IntermediateKeyURI, "intermediate-key-uri", "", "the CA's intermediate key is in a KMS, not in <data-dir>/ca: softkms:path=/FILE (PEM, 0600) or pkcs11:... (builds with -tags pkcs11)")
	fl.StringVar(&c.BundleSignerKeyURI, "bundle-signer-key-uri", "", "the bundle signer's key (ECDSA P-256) is in a KMS, not in <data-dir>/ca")
}

func caCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Manage enrolld's certificate authority"}
	cmd.AddCommand(initCACmd(), rotateIntermediateCmd())
	return cmd
}

func initCACmd() *cobra.Command {
	var dataDir, trustDomain string
	var keys daemon.IssuerConfig
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the CA in <data-dir>/ca (or show the one there); servers sharing a store copy this directory",
		Long: `Creates enrolld's CA (root, intermediate, bundle signer) once, before the first start.
One enrolld creates it on first start anyway; several enrolld sharing an etcd store
(--store etcd://...) refuse to, since all must sign with the same CA: create it here and
copy <data-dir>/ca to each server's data directory (keys stay mode 0600), or keep the
intermediate and bundle-signer keys in a KMS every server reaches.`,
		Example: `  enrolld ca init --data-dir /var/lib/enrolld
  rsync -a /var/lib/enrolld/ca/ enroll-b:/var/lib/enrolld/ca/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, fp, err := daemon.InitCA(dataDir, trustDomain, keys)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "root certificate %s\nsha256 fingerprint %s\n", root, fp)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dataDir, "data-dir", "enrolld-data", "enrolld's state directory")
	fl.StringVar(&trustDomain, "trust-domain", pki.DefaultOptions().TrustDomain, "trust domain in device certificate URI SANs")
	caKeyFlags(fl, &keys)
	return cmd
}

func rotateIntermediateCmd() *cobra.Command {
	var dataDir string
	var keys daemon.IssuerConfig
	var next pki.RotateOptions
	cmd := &cobra.Command{
		Use:   "rotate-intermediate",
		Short: "Replace the CA's intermediate and bundle signer with new ones under the same root; devices keep working",
		Long: `Creates a new intermediate certificate signed by the unchanged root, and a new bundle
signer certificate under it. Devices trust the root, so none re-enrolls: certificates issued
before keep verifying until they expire; new ones chain through the new intermediate.
The replaced files are kept in <data-dir>/ca/archive/<time>/. Restart enrolld afterwards.
Certificates of the old intermediate need a CRL signed by it: enrolld signs one with every
retired intermediate whose key it has (the archived key file, or --retired-intermediate-key-uri)
and publishes all lists in <data-dir>/crl.pem and at GET /v1/crl.pem.`,
		Example: `  enrolld ca rotate-intermediate --data-dir /var/lib/enrolld
  enrolld ca rotate-intermediate --data-dir /var/lib/enrolld \
      --intermediate-key-uri softkms:path=/srv/keys/intermediate-2026.key --new-intermediate-key-uri softkms:path=/srv/keys/intermediate-2027.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rot, err := daemon.RotateIntermediate(dataDir, keys, &next)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "new intermediate serial %x, valid until %s (was %x)\nnew bundle signer serial %x\nreplaced files archived in %s: keep the old intermediate's key there (or its KMS key, named with --retired-intermediate-key-uri) until the certificates it issued have expired (30 days, the longest certificate lifetime, after every enrolld restarted), since it signs their CRL\nrestart enrolld to use it\n",
				rot.NewIntermediate.SerialNumber, rot.NewIntermediate.NotAfter.UTC().Format(time.RFC3339), rot.OldIntermediate.SerialNumber,
				rot.NewBundleSigner.SerialNumber, rot.Archive)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dataDir, "data-dir", "enrolld-data", "enrolld's state directory")
	caKeyFlags(fl, &keys)
	fl.StringVar(&next.IntermediateKeyURI, "new-intermediate-key-uri", "", "KMS URI of the new intermediate's key (a new key); default a new key file in <data-dir>/ca")
	fl.StringVar(&next.BundleSignerKeyURI, "new-bundle-signer-key-uri", "", "KMS URI of the bundle signer's key after the rotation (may be the current one); default a new key file in <data-dir>/ca")
	fl.DurationVar(&next.IntermediateLifetime, "intermediate-lifetime", pki.DefaultIntermediateLifetime, "lifetime of the new intermediate (never beyond the root)")
	return cmd
}

func brokerCertCmd() *cobra.Command {
	var dataDir, out string
	var hosts []string
	var lifetime time.Duration
	var keys daemon.IssuerConfig
	cmd := &cobra.Command{
		Use:   "broker-cert",
		Short: "Issue a TLS server certificate for an external MQTT broker (mosquitto) from the enrollment CA",
		Example: `  enrolld broker-cert --data-dir /var/lib/enrolld --host mqtt.example.com --out /etc/mosquitto/edgeenroll
  # then see deploy/mosquitto/mosquitto.conf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(hosts) == 0 || out == "" {
				return fmt.Errorf("--host and --out are required")
			}
			if err := daemon.WriteBrokerCredentials(dataDir, out, hosts, lifetime, keys); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote broker.crt, broker.key (0600) and root_ca.crt to %s\n", out)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "enrolld-data", "enrolld's state directory (its CA issues the certificate)")
	cmd.Flags().StringVar(&out, "out", "", "directory to write broker.crt, broker.key and root_ca.crt")
	cmd.Flags().StringSliceVar(&hosts, "host", nil, "DNS names or IPs devices use to reach the broker (repeatable)")
	cmd.Flags().DurationVar(&lifetime, "lifetime", pki.MaxLeafLifetime, "certificate lifetime (at most "+pki.MaxLeafLifetime.String()+"; re-issue before it ends)")
	caKeyFlags(cmd.Flags(), &keys)
	return cmd
}
