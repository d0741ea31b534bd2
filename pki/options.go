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
