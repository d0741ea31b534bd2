package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/pki/stepca"
)

// Issuer kinds of IssuerConfig.Kind.
const (
	// IssuerEmbedded: the embedded CA issues device certificates (default).
	IssuerEmbedded = "embedded"
	// IssuerStepCA: an operator's step-ca issues them (pki/stepca).
	IssuerStepCA = "stepca"
)

// stepCACheckTimeout bounds the startup check of the step-ca.
const stepCACheckTimeout = 10 * time.Second

// DefaultRevocationRetryInterval is how often enrolld forwards to the
// step-ca the revocations it has not yet acknowledged (one failed while it
// was down, or enrolld restarted): a revoked certificate stays renewable at
// the step-ca until then.
const DefaultRevocationRetryInterval = time.Minute

// x5cExpiryWarning: a startup warning when the X5C credential expires
// sooner; device certificates are cut to end with it.
const x5cExpiryWarning = 7 * 24 * time.Hour

// IssuerConfig says who signs: which CA issues device certificates, and
// where the embedded CA keeps its signing keys. Bundles, server, operator
// and service certificates and CRLs always come from the embedded CA.
type IssuerConfig struct {
	// Kind is IssuerEmbedded ("" too) or IssuerStepCA.
	Kind string
	// StepCA configures the step-ca issuer (Kind IssuerStepCA).
	StepCA StepCAConfig
	// IntermediateKeyURI and BundleSignerKeyURI keep the embedded CA's
	// keys in a KMS instead of <data-dir>/ca; see pki.Options.
	IntermediateKeyURI, BundleSignerKeyURI string
	// RetiredIntermediateKeyURIs: pki.Options.RetiredIntermediateKeyURIs.
	RetiredIntermediateKeyURIs []string
}

// StepCAConfig names the step-ca and the provisioner enrolld signs one-time
// tokens for: a JWK provisioner (ProvisionerKeyFile) or an X5C provisioner
// (X5CCertFile and X5CKeyFile), exactly one.
type StepCAConfig struct {
	// URL is https://host:port of the step-ca; host must be one of its
	// dnsNames.
	URL string
	// RootFile is the step-ca's root certificate (PEM). Devices must trust
	// it too: see README "Using an existing step-ca".
	RootFile string
	// Provisioner is the JWK or X5C provisioner's name.
	Provisioner string
	// ProvisionerKeyFile is a JWK provisioner's private JWK, encrypted with
	// the password in ProvisionerPasswordFile (or unencrypted, with no
	// password file).
	ProvisionerKeyFile string
	// X5CCertFile (PEM chain, leaf first) and X5CKeyFile (PEM key of the
	// leaf, encrypted with the password in ProvisionerPasswordFile or
	// not) are a credential of an X5C provisioner: the chain must verify
	// to the provisioner's roots.
	X5CCertFile, X5CKeyFile string
	ProvisionerPasswordFile string
	// Timeout bounds each call to the step-ca; 0 means
	// stepca.DefaultTimeout.
	Timeout time.Duration
	// RevocationRetryInterval is how often revocations the step-ca has
	// not acknowledged are forwarded again; 0 means
	// DefaultRevocationRetryInterval.
	RevocationRetryInterval time.Duration
}

// anySet reports whether any step-ca setting is given.
func (sc StepCAConfig) anySet() bool {
	return sc.URL != "" || sc.RootFile != "" || sc.Provisioner != "" || sc.ProvisionerKeyFile != "" ||
		sc.X5CCertFile != "" || sc.X5CKeyFile != "" || sc.ProvisionerPasswordFile != ""
}

// caOptions adds the KMS key URIs to the embedded CA's options.
func (c IssuerConfig) caOptions(opts *pki.Options) *pki.Options {
	opts.IntermediateKeyURI, opts.BundleSignerKeyURI = c.IntermediateKeyURI, c.BundleSignerKeyURI
	opts.RetiredIntermediateKeyURIs = c.RetiredIntermediateKeyURIs
	return opts
}

// deviceIssuer is the issuer enrolld uses and what its TLS listeners need
// to accept the client certificates it issues.
type deviceIssuer struct {
	pki.Issuer
	// clientCAs verify client certificates: the enrollment root, and the
	// step-ca roots when the step-ca issues device certificates.
	clientCAs *x509.CertPool
	// verifyClient (tls.Config.VerifyConnection) narrows what a step-ca
	// root may vouch for; nil with the embedded CA.
	verifyClient func(tls.ConnectionState) error
	close        func()
}

// forwardingIssuer is the step-ca issuer whose revocations, forwarded by
// the server when an operator revokes, go through the RevocationForwarder:
// one the CA acknowledged at once is then not sent again by the next
// reconcile pass.
type forwardingIssuer struct {
	pki.Issuer
	fw *enrollserver.RevocationForwarder
}

// Revoke implements pki.Revoker.
func (i forwardingIssuer) Revoke(ctx context.Context, serial string, reasonCode int, reason string) error {
	return i.fw.Revoke(ctx, serial, reasonCode, reason)
}

// newIssuer builds the device certificate issuer cfg selects. With a
// step-ca it checks at startup that the CA knows the provisioner and the
// credential (stepca.Issuer.Check): a wrong provisioner, key or x5c chain,
// or an x5c certificate that is expired or about to, stops enrolld with
// the reason; an unreachable step-ca is logged and enrolld starts anyway
// (enrollments then fail with an internal error until the step-ca is
// back). It then starts forwarding to the step-ca the revocations it has
// not acknowledged (enrollserver.RevocationForwarder), at once and every
// RevocationRetryInterval until ctx ends or close is called.
func newIssuer(ctx context.Context, cfg IssuerConfig, ca *pki.CA, st store.Store, log *slog.Logger) (*deviceIssuer, error) {
	switch cfg.Kind {
	case "", IssuerEmbedded:
		if cfg.StepCA.anySet() {
			return nil, errors.New("--stepca-* flags are set but --issuer is not stepca")
		}
		return &deviceIssuer{Issuer: ca, clientCAs: ca.RootPool(), close: func() {}}, nil
	case IssuerStepCA:
	default:
		return nil, fmt.Errorf("issuer %q is not %s or %s", cfg.Kind, IssuerEmbedded, IssuerStepCA)
	}

	sc := cfg.StepCA
	var missing []string
	for _, f := range []struct{ flag, v string }{
		{"--stepca-url", sc.URL}, {"--stepca-root", sc.RootFile}, {"--stepca-provisioner", sc.Provisioner},
	} {
		if f.v == "" {
			missing = append(missing, f.flag)
		}
	}
	x5c := sc.X5CCertFile != "" || sc.X5CKeyFile != ""
	switch {
	case x5c && sc.ProvisionerKeyFile != "":
		return nil, errors.New("--stepca-provisioner-key (JWK provisioner) and --stepca-x5c-cert/--stepca-x5c-key (X5C provisioner) exclude each other: give one")
	case x5c && sc.X5CCertFile == "":
		missing = append(missing, "--stepca-x5c-cert")
	case x5c && sc.X5CKeyFile == "":
		missing = append(missing, "--stepca-x5c-key")
	case !x5c && sc.ProvisionerKeyFile == "":
		missing = append(missing, "--stepca-provisioner-key (JWK provisioner) or --stepca-x5c-cert and --stepca-x5c-key (X5C provisioner)")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("--issuer stepca needs %v", missing)
	}
	roots, err := os.ReadFile(sc.RootFile)
	if err != nil {
		return nil, fmt.Errorf("reading the step-ca root: %w", err)
	}
	opts := stepca.Options{
		URL: sc.URL, Roots: roots, Provisioner: sc.Provisioner,
		TrustDomain: ca.TrustDomain(), Timeout: sc.Timeout,
	}
	if x5c {
		if opts.X5C, err = stepca.ReadX5CCredential(sc.X5CCertFile, sc.X5CKeyFile, sc.ProvisionerPasswordFile); err != nil {
			return nil, err
		}
	} else if opts.Key, err = stepca.ReadProvisionerKey(sc.ProvisionerKeyFile, sc.ProvisionerPasswordFile); err != nil {
		return nil, err
	}
	iss, err := stepca.New(opts)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, stepCACheckTimeout)
	defer cancel()
	switch err := iss.Check(cctx); {
	case errors.Is(err, stepca.ErrUnavailable):
		log.Warn("step-ca is unreachable; enrollments fail until it answers", "stepca_url", iss.URL(), "err", err.Error())
	case err != nil:
		iss.Close()
		return nil, err
	}
	log.Info("device certificates are issued by step-ca", "stepca_url", iss.URL(), "provisioner", sc.Provisioner, "credential", iss.Credential())
	if end := iss.CredentialNotAfter(); !end.IsZero() && time.Until(end) < x5cExpiryWarning {
		log.Warn("the x5c certificate expires soon: device certificates end no later, and none is issued in its last minutes; renew it and restart enrolld",
			"not_after", end.UTC().Format(time.RFC3339))
	}

	fw, err := enrollserver.NewRevocationForwarder(enrollserver.RevocationForwarderConfig{Store: st, CA: ca, Revoker: iss, Logger: log})
	if err != nil {
		iss.Close()
		return nil, err
	}
	interval := sc.RevocationRetryInterval
	if interval <= 0 {
		interval = DefaultRevocationRetryInterval
	}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fw.Run(fctx, interval)
	}()

	clientCAs := ca.RootPool()
	// The step-ca roots are added to the enrollment root's pool.
	for _, c := range parsePEMCertificates(roots) {
		clientCAs.AddCert(c)
	}
	return &deviceIssuer{
		Issuer:       forwardingIssuer{Issuer: iss, fw: fw},
		clientCAs:    clientCAs,
		verifyClient: stepCAClientPolicy(ca, st),
		// The forwarder stops before the step-ca client and the store
		// (closed after this by Run) go away.
		close: func() { stop(); <-done; iss.Close() },
	}, nil
}

// stepCAClientPolicy returns the tls.Config.VerifyConnection of a listener
// that trusts the step-ca roots besides the enrollment root. A client
// certificate that chains to the enrollment root passes (operators,
// services, devices enrolled before the switch). One that chains only to
// a step-ca root must be a device certificate that this enrolld obtained:
// a device URI SAN, and a serial recorded for that device. So a step-ca
// that signs names for other users can never make an operator, and a
// certificate it issued outside enrollment is no device.
func stepCAClientPolicy(ca *pki.CA, st store.Store) func(tls.ConnectionState) error {
	root := ca.Root()
	return func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) == 0 {
			return nil // no client certificate; handlers that need one refuse
		}
		for _, chain := range cs.VerifiedChains {
			if chain[len(chain)-1].Equal(root) {
				return nil
			}
		}
		leaf := cs.VerifiedChains[0][0]
		id, err := pki.DeviceIDFromCertificate(leaf, ca.TrustDomain())
		if err != nil {
			return fmt.Errorf("client certificate chains to the step-ca root but is not a device certificate: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rec, err := st.Certificate(ctx, leaf.SerialNumber.Text(16))
		if err != nil || rec.DeviceID != id {
			return fmt.Errorf("client certificate %s from the step-ca was not issued to device %s through enrollment", leaf.SerialNumber.Text(16), id)
		}
		return nil
	}
}

// parsePEMCertificates returns the certificates in data (stepca.New has
// already refused data without any).
func parsePEMCertificates(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return out
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil && block.Type == "CERTIFICATE" {
			out = append(out, c)
		}
	}
}

// RotateIntermediate gives enrolld's CA a new intermediate and bundle
// signer under its root (pki.RotateIntermediate). cfg's key URIs say where
// the current keys are, next where the new ones go. Restart enrolld
// afterwards.
func RotateIntermediate(dataDir string, cfg IssuerConfig, next *pki.RotateOptions) (*pki.Rotation, error) {
	return pki.RotateIntermediate(caDir(dataDir), cfg.caOptions(pki.DefaultOptions()), next)
}
