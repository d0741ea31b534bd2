package pki

import (
	"errors"
	"fmt"
	"time"
)

// DefaultTrustDomain is the trust domain of device URIs when Options does not
// name one.
const DefaultTrustDomain = "edgeenroll.local"

// Options configure the CA. A nil *Options means DefaultOptions(); a zero
// field means that field's default.
type Options struct {
	// TrustDomain is the SPIFFE trust domain of device identities,
	// spiffe://<TrustDomain>/device/<id>. Default DefaultTrustDomain.
	TrustDomain string
	// Now returns the current time. Default time.Now; a test seam.
	Now func() time.Time
	// RootLifetime and IntermediateLifetime are used only when a new CA is
	// created; loading an existing CA ignores them. Defaults
	// DefaultRootLifetime (10 years) and DefaultIntermediateLifetime
	// (5 years). The intermediate never outlives the root.
	RootLifetime, IntermediateLifetime time.Duration

	// IntermediateKeyURI and BundleSignerKeyURI, if set, name the
	// intermediate's and the bundle signer's private keys in a KMS
	// (go.step.sm/crypto/kms) instead of the files intermediate_ca.key and
	// bundle_signer.key in the CA directory, which must then be absent:
	//   - softkms:path=/srv/keys/intermediate.key, a PEM key file kept
	//     elsewhere (another volume, a tmpfs filled at boot), mode 0600,
	//     unencrypted (pki never prompts);
	//   - pkcs11:module-path=...;token=...;id=...?pin-value=..., a key in
	//     an HSM, in builds with cgo and -tags pkcs11.
	// The key must exist: a new CA certifies it, and loading checks it
	// matches its certificate. The bundle signer key must be ECDSA P-256.
	IntermediateKeyURI, BundleSignerKeyURI string

	// RetiredIntermediateKeyURIs name, in a KMS, the keys of intermediates
	// that RotateIntermediate replaced, so that their CRLs are still
	// signed while certificates they issued may be valid (see
	// RetiredIntermediate). A retired key kept in a file stays in the
	// rotation's archive directory and needs no URI. Each URI is matched to
	// an archived intermediate by its public key.
	RetiredIntermediateKeyURIs []string
}

// DefaultOptions returns the options used when nil is passed.
func DefaultOptions() *Options {
	return &Options{
		TrustDomain:          DefaultTrustDomain,
		Now:                  time.Now,
		RootLifetime:         DefaultRootLifetime,
		IntermediateLifetime: DefaultIntermediateLifetime,
	}
}

// config is Options after defaults and validation.
type config struct {
	trustDomain          string
	now                  func() time.Time
	rootLifetime         time.Duration
	intermediateLifetime time.Duration
	intermediateKeyURI   string
	bundleSignerKeyURI   string
	// retiredIntermediateKeyURIs: Options.RetiredIntermediateKeyURIs.
	retiredIntermediateKeyURIs []string
}

// buildConfig applies defaults to opts and reports every invalid field at
// once.
func buildConfig(opts *Options) (config, error) {
	def := DefaultOptions()
	if opts == nil {
		opts = def
	}
	c := config{
		trustDomain:          orDefault(opts.TrustDomain, def.TrustDomain),
		now:                  opts.Now,
		rootLifetime:         orDefault(opts.RootLifetime, def.RootLifetime),
		intermediateLifetime: orDefault(opts.IntermediateLifetime, def.IntermediateLifetime),
		intermediateKeyURI:   opts.IntermediateKeyURI,
		bundleSignerKeyURI:   opts.BundleSignerKeyURI,

		retiredIntermediateKeyURIs: opts.RetiredIntermediateKeyURIs,
	}
	if c.now == nil {
		c.now = def.Now
	}

	var errs []error
	if err := ValidateTrustDomain(c.trustDomain); err != nil {
		errs = append(errs, err)
	}
	if c.rootLifetime < 0 {
		errs = append(errs, fmt.Errorf("root lifetime %s is negative; use 0 for the default", c.rootLifetime))
	}
	if c.intermediateLifetime < 0 {
		errs = append(errs, fmt.Errorf("intermediate lifetime %s is negative; use 0 for the default", c.intermediateLifetime))
	}
	if c.intermediateLifetime > c.rootLifetime {
		errs = append(errs, fmt.Errorf("intermediate lifetime %s exceeds root lifetime %s; shorten it", c.intermediateLifetime, c.rootLifetime))
	}
	if err := validateKeyURI("intermediate key URI", c.intermediateKeyURI); err != nil {
		errs = append(errs, err)
	}
	if err := validateKeyURI("bundle signer key URI", c.bundleSignerKeyURI); err != nil {
		errs = append(errs, err)
	}
	for _, uri := range c.retiredIntermediateKeyURIs {
		if uri == "" || uri == c.intermediateKeyURI || uri == c.bundleSignerKeyURI {
			errs = append(errs, errors.New("a retired intermediate key URI is empty or names a key in service; give the URI of the replaced intermediate's key"))
			continue
		}
		if err := validateKeyURI("retired intermediate key URI", uri); err != nil {
			errs = append(errs, err)
		}
	}
	if c.intermediateKeyURI != "" && c.intermediateKeyURI == c.bundleSignerKeyURI {
		errs = append(errs, errors.New("intermediate and bundle signer key URIs name the same key; give each its own key"))
	}
	if len(errs) > 0 {
		return config{}, fmt.Errorf("%w: %w", ErrOptions, errors.Join(errs...))
	}
	return c, nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
