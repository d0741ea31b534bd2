package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/enrollserver/store/etcdstore"
)

// StoreConfig says where enrolld keeps its state.
type StoreConfig struct {
	// URL is "" (the default: bbolt in <data-dir>/enroll.db, for one
	// server) or etcd://HOST:PORT[,HOST:PORT…]/PREFIX (etcds:// for TLS),
	// a store several enrolld share.
	URL string
	// CAFile, CertFile and KeyFile are PEM files for etcds://: the CA of
	// etcd's serving certificates and enrolld's client certificate.
	CAFile, CertFile, KeyFile string
}

// shared reports whether the store is shared by several servers.
func (c StoreConfig) shared() bool { return c.URL != "" }

// openStore opens the store cfg names. With bbolt, begun sessions live in
// memory unless durableSessions; with etcd they are always in etcd, where
// any server can finish them.
func openStore(ctx context.Context, cfg StoreConfig, dataDir string, durableSessions bool, log *slog.Logger) (store.Store, error) {
	if !cfg.shared() {
		if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
			return nil, fmt.Errorf("--etcd-ca, --etcd-cert and --etcd-key need --store etcds://…")
		}
		opts := store.DefaultOptions()
		opts.MemorySessions = !durableSessions
		return store.Open(storePath(dataDir), opts)
	}
	opts := &etcdstore.Options{Logger: log}
	if strings.HasPrefix(cfg.URL, "etcds://") {
		tc, err := etcdTLS(cfg)
		if err != nil {
			return nil, err
		}
		opts.TLS = tc
	} else if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		return nil, fmt.Errorf("--etcd-ca, --etcd-cert and --etcd-key need an etcds:// store URL, not %s", cfg.URL)
	}
	return etcdstore.Open(ctx, cfg.URL, opts)
}

// etcdTLS is the client TLS of an etcds:// store: etcd's CA (default the
// system roots) and, if given, enrolld's client certificate.
func etcdTLS(cfg StoreConfig) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading --etcd-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--etcd-ca %s holds no PEM certificate", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, fmt.Errorf("--etcd-cert and --etcd-key go together")
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading --etcd-cert/--etcd-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// requireExistingCA refuses to create a CA when the store is shared: every
// enrolld of a cluster must sign with the same CA, so it is created once
// and copied (or its keys shared through a KMS), never made per server.
func requireExistingCA(dataDir string) error {
	if _, err := os.Stat(RootCertPath(dataDir)); err == nil {
		return nil
	} else if !os.IsNotExist(err) {
		return fmt.Errorf("checking the CA: %w", err)
	}
	return fmt.Errorf("with a shared store (--store etcd://…) every enrolld must use the same CA, and %s has none: "+
		"create it once with `enrolld ca init --data-dir DIR` and copy DIR/ca to each server's --data-dir (keys stay 0600)", caDir(dataDir))
}
