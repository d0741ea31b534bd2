// Package daemon wires enrolld together: the data directory, the embedded
// CA, the store, the enrollment core and the HTTPS listener. cmd/enrolld
// only parses flags into a Config and calls Run.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/enrollserver/httpapi"
	"github.com/edgeenroll/edgeenroll/enrollserver/mqttapi"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Server limits of the HTTPS listener.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 15 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 16 << 10
	serverCertLife    = 30 * 24 * time.Hour
	purgeInterval     = time.Minute
	shutdownGrace     = 10 * time.Second
)

// Config is enrolld's configuration.
type Config struct {
	// DataDir holds the CA (ca/), the store (enroll.db). Created 0700.
	DataDir string
	// Listen is the HTTPS address.
	Listen string
	// MQTTListen, if set, runs the embedded MQTT broker (TLS) there.
	MQTTListen string
	// MQTTBroker, if set, serves enrollment through an external broker:
	// mqtts://host:port of its mutual-TLS listener (deploy/mosquitto).
	MQTTBroker string
	// MQTTBrokerCA is a PEM file of the external broker's CA; default the
	// enrollment root (a broker certificate from `enrolld broker-cert`).
	MQTTBrokerCA string
	// Hostnames go into the server certificate (DNS names or IPs).
	Hostnames []string
	// ManufacturerRoots are PEM files of TPM vendor EK roots.
	ManufacturerRoots []string
	TrustDomain       string
	LeafLifetime      time.Duration
	SessionTTL        time.Duration
	// BundleConfigFile is a JSON object delivered to devices; "" sends {}.
	BundleConfigFile string
	BundleVersion    uint64
	// DefaultGroup, DefaultAdmission, OpenMode, MaxPending, PendingTTL,
	// PendingRetryAfter and CRLLifetime are enrollserver.Config's.
	DefaultGroup      string
	DefaultAdmission  string
	OpenMode          bool
	MaxPending        int
	PendingTTL        time.Duration
	PendingRetryAfter time.Duration
	CRLLifetime       time.Duration
	// PCRs are the SHA-256 PCRs every enrollment quotes (nil:
	// enrollserver.DefaultPCRs); groups may require more.
	PCRs []int
	// Issuer selects who issues device certificates (the embedded CA or
	// a step-ca) and where the CA keeps its keys (issuer.go).
	Issuer IssuerConfig
	// Store selects where state lives: bbolt in DataDir (default) or an
	// etcd cluster several enrolld share (store.go).
	Store  StoreConfig
	Logger *slog.Logger
	// DurableSessions keeps begun, unfinished enrollment sessions in the
	// store file (an fsynced commit at every begin) instead of in memory
	// (store.Options.MemorySessions, the default). In memory, a restart
	// makes devices caught between begin and finish begin again, as it
	// does a device repeating a finish whose answer it lost; no finished
	// enrollment is lost either way.
	DurableSessions bool
	// VerdictMemoSize is enrollserver.Config.VerdictMemoSize: 0 means its
	// default, a negative value remembers no verdicts.
	VerdictMemoSize int
	// Admission bounds enrollment work (begin, finish) over HTTPS and
	// MQTT together: slots, queue, per-client rate limits (zero fields:
	// the admission package's defaults).
	Admission admission.Options
	// DisableHTTP2 serves HTTP/1.1 only. A device makes begin and finish
	// on one kept-alive connection either way; HTTP/2's per-connection
	// setup (SETTINGS and WINDOW_UPDATE frames, a goroutine per stream)
	// buys it nothing and costs the server 0.1-0.2 ms of CPU per
	// enrollment (enroll-bench, 2-core EPYC).
	DisableHTTP2 bool
	// TLSKeyExchange selects the TLS 1.3 key exchanges offered
	// (TLSKeyExchanges); "" means TLSKeyExchangeHybrid.
	TLSKeyExchange string
	// PprofListen, if set, serves net/http/pprof (plain HTTP) on this
	// address, which must be a loopback one: profiles show request data.
	PprofListen string
	// admission is the controller Run built from Admission.
	admission *admission.Controller
	// Ready, if set, receives the bound address once serving.
	Ready chan<- string
}

// Paths inside the data directory.
func caDir(dataDir string) string     { return filepath.Join(dataDir, "ca") }
func storePath(dataDir string) string { return filepath.Join(dataDir, "enroll.db") }

// CRLPath is where enrolld publishes the current revocation list (DER),
// rewritten atomically at every change; GET /v1/crl serves the same list.
func CRLPath(dataDir string) string { return filepath.Join(dataDir, "crl.der") }

// warnRetired logs each retired intermediate whose certificates may still
// be valid but whose CRL cannot be signed: its key was deleted from the
// archive, or is in a KMS that no --retired-intermediate-key-uri names.
func warnRetired(log *slog.Logger, ca *pki.CA, now time.Time) {
	for _, uri := range ca.UnmatchedRetiredKeyURIs() {
		log.Warn("--retired-intermediate-key-uri names a key of no retired intermediate that needs one; check the URI, or drop it", "uri", uri)
	}
	for _, r := range ca.RetiredIntermediates() {
		if !r.CanSignCRL && r.MayHaveValidCertificates(now) {
			log.Warn("a retired intermediate's certificates may still be valid, but its key is gone: their revocations reach no CRL; put its key back in the archive, or name it with --retired-intermediate-key-uri",
				"archive", r.Archive, "retired_at", r.RetiredAt, "intermediate_serial", r.Certificate.SerialNumber.Text(16))
		}
	}
}

// CRLPEMPath is where enrolld publishes every issuer's revocation list,
// PEM (api.PathCRLPEM): the file for OpenSSL-based relying parties, which
// after an intermediate rotation need the retired intermediate's list too.
func CRLPEMPath(dataDir string) string { return filepath.Join(dataDir, "crl.pem") }

// RootCertPath is where the enrollment root certificate lives: what devices
// must be given as their trust anchor.
func RootCertPath(dataDir string) string { return filepath.Join(caDir(dataDir), "root_ca.crt") }

// Run serves until ctx is cancelled, then shuts down gracefully.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("creating data dir: %w", err)
	}
	caOpts := pki.DefaultOptions()
	if cfg.TrustDomain != "" {
		caOpts.TrustDomain = cfg.TrustDomain
	}
	if cfg.Store.shared() {
		if err := requireExistingCA(cfg.DataDir); err != nil {
			return err
		}
	}
	ca, err := pki.LoadOrCreateCA(caDir(cfg.DataDir), cfg.Issuer.caOptions(caOpts))
	if err != nil {
		return err
	}
	warnRetired(log, ca, time.Now())
	if issued, err := ensureOperatorCredential(AdminDir(cfg.DataDir), ca, time.Now()); err != nil {
		return err
	} else if issued {
		log.Info("wrote bootstrap operator credential for enrollctl", "admin_dir", AdminDir(cfg.DataDir), "operator", BootstrapOperator)
	}
	roots, err := loadPool(cfg.ManufacturerRoots)
	if err != nil {
		return err
	}
	bundleCfg := json.RawMessage(`{}`)
	if cfg.BundleConfigFile != "" {
		if bundleCfg, err = os.ReadFile(cfg.BundleConfigFile); err != nil {
			return fmt.Errorf("reading bundle config: %w", err)
		}
	}
	version := cfg.BundleVersion
	if version == 0 {
		version = 1
	}
	curves, err := tlsCurves(cfg.TLSKeyExchange)
	if err != nil {
		return err
	}
	if cfg.PprofListen != "" {
		stop, err := servePprof(cfg.PprofListen, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	st, err := openStore(ctx, cfg.Store, cfg.DataDir, cfg.DurableSessions, log)
	if err != nil {
		return err
	}
	defer st.Close()
	issuer, err := newIssuer(ctx, cfg.Issuer, ca, st, log)
	if err != nil {
		return err
	}
	defer issuer.close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := enrollserver.New(enrollserver.Config{
		Store: st, CA: ca, Issuer: issuer.Issuer, ManufacturerRoots: roots,
		LeafLifetime: cfg.LeafLifetime, SessionTTL: cfg.SessionTTL,
		Bundles:      enrollserver.StaticBundle{Version: version, Config: bundleCfg},
		DefaultGroup: cfg.DefaultGroup, DefaultAdmission: cfg.DefaultAdmission, OpenMode: cfg.OpenMode,
		MaxPending: cfg.MaxPending, PendingTTL: cfg.PendingTTL, PendingRetryAfter: cfg.PendingRetryAfter,
		CRLLifetime: cfg.CRLLifetime, PCRs: cfg.PCRs, VerdictMemoSize: cfg.VerdictMemoSize,
		OnCRL: func(crls [][]byte) error {
			return errors.Join(atomicfile.Write(CRLPath(cfg.DataDir), crls[0], 0o644),
				atomicfile.Write(CRLPEMPath(cfg.DataDir), pki.EncodeCRLsPEM(crls), 0o644))
		},
		Logger: log, Registerer: reg,
	})
	if err != nil {
		return err
	}
	if _, err := srv.RefreshCRL(ctx); err != nil {
		return fmt.Errorf("signing the initial crl: %w", err)
	}
	hosts := cfg.Hostnames
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	// The server certificate is issued again at half its lifetime, so
	// that a server running longer than serverCertLife keeps serving.
	serverCert := &renewingCert{what: "the server certificate", issue: func() (*tls.Certificate, error) {
		return ca.IssueServer(hosts, serverCertLife)
	}}
	if _, err := serverCert.get(); err != nil {
		return err
	}
	tlsCfg := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serverCert.get() },
		// Client certificates are optional at the handshake (devices
		// enroll without one) and verified against our root when given;
		// handlers that need one refuse calls without.
		ClientAuth:       tls.VerifyClientCertIfGiven,
		ClientCAs:        issuer.clientCAs,
		VerifyConnection: issuer.verifyClient,
		CurvePreferences: curves,
		// Every answer in one TLS record and one write: dynamic record
		// sizing starts a connection with ~1.2 KB records, for a browser's
		// first paint over a slow-starting link, so a finish answer (~4 KB)
		// took two records and two write system calls. Our clients read
		// whole answers, and on loopback the extra write cost ~20 µs of
		// server CPU per enrollment.
		DynamicRecordSizingDisabled: true,
	}
	// One admission budget for HTTPS and MQTT: both spend the same CPU.
	admOpts := cfg.Admission
	admOpts.Registerer = reg
	adm, err := admission.New(&admOpts)
	if err != nil {
		return err
	}
	defer adm.Close()
	cfg.admission = adm
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(!cfg.DisableHTTP2)
	hs := &http.Server{
		Protocols:         protocols,
		Handler:           httpapi.NewHandler(srv, httpapi.Options{Logger: log, Gatherer: reg, Admission: adm}),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	mqttAddr := ""
	if cfg.MQTTListen != "" {
		broker, err := mqttapi.New(srv, mqttapi.Options{Listen: cfg.MQTTListen, TLS: tlsCfg, Logger: log, Admission: adm})
		if err != nil {
			ln.Close()
			return err
		}
		defer broker.Close()
		mqttAddr = broker.Addr()
	}
	if cfg.MQTTBroker != "" {
		stopBroker, err := serveExternalBroker(ctx, srv, ca, cfg, st, log)
		if err != nil {
			ln.Close()
			return err
		}
		defer stopBroker()
	}
	log.Info("enrolld serving", "addr", ln.Addr().String(), "mqtt_addr", mqttAddr, "data_dir", cfg.DataDir, "root_ca", RootCertPath(cfg.DataDir),
		"trust_domain", ca.TrustDomain(), "manufacturer_roots", len(cfg.ManufacturerRoots), "closed_mode", !cfg.OpenMode,
		"crl", CRLPath(cfg.DataDir))
	if cfg.Ready != nil {
		cfg.Ready <- ln.Addr().String()
	}
	go purgeLoop(ctx, srv, log)
	go srv.FollowConfigChanges(ctx)
	go srv.FollowRevocations(ctx)
	go crlLoop(ctx, srv, log)
	errc := make(chan error, 1)
	go func() { errc <- hs.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("enrolld stopped")
	return nil
}

func purgeLoop(ctx context.Context, srv *enrollserver.Server, log *slog.Logger) {
	t := time.NewTicker(purgeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if sessions, pending, imports, err := srv.PurgeExpired(ctx); err != nil {
				log.Error("purging expired records", "err", err)
			} else if sessions+pending+imports > 0 {
				log.Info("purged expired records", "sessions", sessions, "pending_devices", pending, "staged_imports", imports)
			}
		}
	}
}

// crlLoop re-signs the CRL well before its nextUpdate.
func crlLoop(ctx context.Context, srv *enrollserver.Server, log *slog.Logger) {
	t := time.NewTicker(srv.CRLRefreshInterval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := srv.RefreshCRL(ctx); err != nil {
				log.Error("refreshing crl", "err", err)
			}
		}
	}
}

// loadPool reads PEM certificates; no files means nil (trust no EK
// certificate).
func loadPool(files []string) (*x509.CertPool, error) {
	if len(files) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading manufacturer root: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("manufacturer root %s holds no PEM certificate", f)
		}
	}
	return pool, nil
}
