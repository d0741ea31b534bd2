package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/mqttapi"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
	"github.com/edgeenroll/edgeenroll/pki"
)

// BrokerClientName is the certificate common name, and so the broker user
// name, of enrolld's connection to an external broker (deploy/mosquitto's
// ACL grants it every client's request and response topics).
const BrokerClientName = "enrolld"

// brokerClientLifetime bounds enrolld's broker client certificate; it is
// made afresh at every start and never written to disk.
const brokerClientLifetime = 30 * 24 * time.Hour

// externalBrokerRole is the role (store.Leadership) of the one enrolld
// that holds the connection to the external broker when several share a
// store: the broker knows enrolld by one client ID, and every request must
// be answered once.
const externalBrokerRole = "mqtt-external-broker"

// leadRetry is the pause before campaigning again after an election error.
const leadRetry = 2 * time.Second

// serveExternalBroker serves enrollment through the external broker until
// ctx ends. With a store several servers share (store.Leadership), only
// the elected one connects, and another takes over when it goes away
// (within the election's lease, ten seconds); the others still push config
// changes through it (FollowConfigChanges on the leader relays every
// server's). With one server it connects before returning, and a failure
// stops enrolld; with a shared store it returns at once and connects when
// elected. stop closes the connection and waits for the loop to end.
func serveExternalBroker(ctx context.Context, srv *enrollserver.Server, ca *pki.CA, cfg Config, st store.Store, log *slog.Logger) (stop func(), err error) {
	lead, ok := st.(store.Leadership)
	if !ok {
		ext, err := connectExternalBroker(ctx, srv, ca, cfg, log)
		if err != nil {
			return nil, err
		}
		return func() { ext.Close() }, nil
	}
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s/%d", host, os.Getpid())
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			held, resign, err := lead.Lead(ctx, externalBrokerRole, id)
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("external MQTT broker: election failed; retrying", "err", err)
					sleepCtx(ctx, leadRetry)
				}
				continue
			}
			log.Info("external MQTT broker: this enrolld holds the connection", "id", id)
			ext, err := connectExternalBroker(held, srv, ca, cfg, log)
			if err != nil {
				log.Error("external MQTT broker: connecting", "err", err)
				resign()
				sleepCtx(ctx, leadRetry)
				continue
			}
			<-held.Done()
			ext.Close()
			resign()
			if ctx.Err() == nil {
				log.Warn("external MQTT broker: lost the election (etcd unreachable?); campaigning again")
			}
		}
	}()
	return func() { cancel(); <-done }, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func connectExternalBroker(ctx context.Context, srv *enrollserver.Server, ca *pki.CA, cfg Config, log *slog.Logger) (*mqttapi.External, error) {
	roots := ca.RootPool()
	if cfg.MQTTBrokerCA != "" {
		pemBytes, err := os.ReadFile(cfg.MQTTBrokerCA)
		if err != nil {
			return nil, fmt.Errorf("reading the broker CA: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("broker CA %s holds no PEM certificate", cfg.MQTTBrokerCA)
		}
	}
	// Issued afresh at a handshake (a reconnect) once half of its
	// lifetime has passed, so a connection that outlives a certificate
	// still reconnects.
	certs := &renewingCert{what: "enrolld's broker client certificate", issue: func() (*tls.Certificate, error) {
		return ca.IssueServiceClient(BrokerClientName, brokerClientLifetime)
	}}
	if _, err := certs.get(); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ext, err := mqttapi.NewExternal(cctx, srv, mqttapi.ExternalOptions{
		BrokerURL: cfg.MQTTBroker,
		TLS:       &tls.Config{RootCAs: roots, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return certs.get() }},
		Logger:    log,
		Admission: cfg.admission,
	})
	if err != nil {
		return nil, fmt.Errorf("external MQTT broker: %w", err)
	}
	log.Info("serving enrollment through an external MQTT broker", "broker", cfg.MQTTBroker, "user", BrokerClientName)
	return ext, nil
}

// WriteBrokerCredentials issues a TLS server certificate for an external
// broker (such as mosquitto) from the existing CA in dataDir (its keys
// where keys says: files, or a KMS) and writes broker.crt
// (leaf and intermediate), broker.key (0600) and root_ca.crt into outDir.
func WriteBrokerCredentials(dataDir, outDir string, hosts []string, lifetime time.Duration, keys IssuerConfig) error {
	// The CA must exist: a mistyped --data-dir must not make a new CA
	// whose root no device trusts.
	if _, err := os.Stat(RootCertPath(dataDir)); err != nil {
		return fmt.Errorf("no CA in %s (is --data-dir enrolld's?): %w", caDir(dataDir), err)
	}
	ca, err := pki.LoadOrCreateCA(caDir(dataDir), keys.caOptions(pki.DefaultOptions()))
	if err != nil {
		return err
	}
	cert, err := ca.IssueServer(hosts, lifetime)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{"broker.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{"broker.crt", chain, 0o644},
		{"root_ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root().Raw}), 0o644},
	} {
		if err := atomicfile.Write(filepath.Join(outDir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}
