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
	cert, err := ca.IssueServiceClient(BrokerClientName, brokerClientLifetime)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ext, err := mqttapi.NewExternal(cctx, srv, mqttapi.ExternalOptions{
		BrokerURL: cfg.MQTTBroker,
		TLS:       &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{*cert}},
		Logger:    log,
	})
	if err != nil {
		return nil, fmt.Errorf("external MQTT broker: %w", err)
	}
	log.Info("serving enrollment through an external MQTT broker", "broker", cfg.MQTTBroker, "user", BrokerClientName)
	return ext, nil
}

// WriteBrokerCredentials issues a TLS server certificate for an external
// broker (such as mosquitto) from the CA in dataDir and writes broker.crt
// (leaf and intermediate), broker.key (0600) and root_ca.crt into outDir.
func WriteBrokerCredentials(dataDir, outDir string, hosts []string, lifetime time.Duration) error {
	ca, err := pki.LoadOrCreateCA(caDir(dataDir), nil)
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
