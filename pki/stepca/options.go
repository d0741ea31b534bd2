package stepca

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/edgeenroll/edgeenroll/pki"
)

// Options configure an Issuer. URL, Roots, Provisioner and exactly one of
// Key and X5C are required; zero values of the others take their defaults.
type Options struct {
	// URL is the step-ca's base URL, https://ca.example.com:9000. Its host
	// must be one of the CA's dnsNames: the token audience is
	// URL + /1.0/sign.
	URL string
	// Roots is PEM holding the step-ca's root certificate(s). The CA's TLS
	// certificate and every returned chain must verify to them; the
	// system roots are never used.
	Roots []byte
	// Provisioner is the name of a JWK provisioner of the step-ca (with
	// Key) or of an X5C provisioner (with X5C).
	Provisioner string
	// Key is a JWK provisioner's private key (ReadProvisionerKey).
	Key *jose.JSONWebKey
	// X5C is a certificate and key that chain to the roots of an X5C
	// provisioner (ReadX5CCredential). Tokens carry its chain in their
	// x5c header, and no certificate asked for ends after its leaf.
	X5C *X5CCredential
	// TrustDomain of the device URI SANs asked for; it must be the
	// embedded CA's (pki.CA.TrustDomain). Default pki.DefaultTrustDomain.
	TrustDomain string
	// Timeout bounds each call to step-ca; default DefaultTimeout, at most
	// MaxTimeout.
	Timeout time.Duration
	// Now returns the current time (token times, chain checks). Default
	// time.Now; a test seam. step-ca checks token times against its own
	// clock.
	Now func() time.Time
	// Rand supplies token IDs. Default crypto/rand.Reader.
	Rand io.Reader
}

// config is Options after defaults and validation.
type config struct {
	base            *url.URL
	signURL         string
	revokeURL       string
	provisionersURL string
	// audience and revokeAudience are the aud of sign and revoke tokens:
	// the endpoint's URL, with #x5c/<provisioner> for an X5C provisioner
	// (step-ca finds the provisioner of an X5C token by that fragment).
	audience       string
	revokeAudience string
	roots          *x509.CertPool
	provisioner    string
	cred           credential
	trustDomain    string
	timeout        time.Duration
	now            func() time.Time
	rand           io.Reader
}

// buildConfig applies defaults and reports every invalid field at once.
func buildConfig(o Options) (config, error) {
	c := config{
		provisioner: o.Provisioner,
		trustDomain: o.TrustDomain,
		timeout:     o.Timeout,
		now:         o.Now,
		rand:        o.Rand,
	}
	if c.trustDomain == "" {
		c.trustDomain = pki.DefaultTrustDomain
	}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.rand == nil {
		c.rand = rand.Reader
	}

	var errs []error
	if u, err := parseBaseURL(o.URL); err != nil {
		errs = append(errs, err)
	} else {
		c.base = u
		c.signURL = u.JoinPath("1.0", "sign").String()
		c.revokeURL = u.JoinPath("1.0", "revoke").String()
		c.provisionersURL = u.JoinPath("1.0", "provisioners").String()
		c.audience, c.revokeAudience = c.signURL, c.revokeURL
		if o.X5C != nil && o.Key == nil {
			// As step-ca's Audiences.WithFragment builds them.
			frag := &url.URL{Fragment: "x5c/" + o.Provisioner}
			c.audience = u.JoinPath("1.0", "sign").ResolveReference(frag).String()
			c.revokeAudience = u.JoinPath("1.0", "revoke").ResolveReference(frag).String()
		}
	}
	if roots, err := parseRoots(o.Roots); err != nil {
		errs = append(errs, err)
	} else {
		c.roots = roots
	}
	if c.provisioner == "" {
		errs = append(errs, errors.New("provisioner name is empty; name the step-ca's JWK or X5C provisioner"))
	}
	switch {
	case o.Key != nil && o.X5C != nil:
		errs = append(errs, errors.New("both a provisioner key and an x5c credential are set; give one (Key for a JWK provisioner, X5C for an X5C provisioner)"))
	case o.X5C != nil:
		if cred, err := newX5CCredential(o.X5C); err != nil {
			errs = append(errs, err)
		} else {
			c.cred = cred
		}
	default:
		if alg, err := signingAlgorithm(o.Key); err != nil {
			errs = append(errs, err)
		} else {
			c.cred = credential{jwk: o.Key, alg: alg}
		}
	}
	if err := pki.ValidateTrustDomain(c.trustDomain); err != nil {
		errs = append(errs, err)
	}
	if c.timeout < 0 || c.timeout > MaxTimeout {
		errs = append(errs, fmt.Errorf("timeout %s is outside (0, %s]; use 0 for the default %s", c.timeout, MaxTimeout, DefaultTimeout))
	}
	if len(errs) > 0 {
		return config{}, fmt.Errorf("%w: %w", ErrOptions, errors.Join(errs...))
	}
	return c, nil
}

// parseBaseURL accepts https://host[:port] with an empty or "/" path.
func parseBaseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("url is empty; give the step-ca's https:// address")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("url %.200q: %w", s, err)
	}
	switch {
	case u.Scheme != "https":
		return nil, fmt.Errorf("url %.200q: scheme must be https", s)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("url %.200q has no host", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/"):
		return nil, fmt.Errorf("url %.200q: want https://host[:port] without user, path, query or fragment", s)
	}
	return &url.URL{Scheme: "https", Host: u.Host}, nil
}

// parseRoots reads PEM certificates, which must all be CA certificates.
func parseRoots(data []byte) (*x509.CertPool, error) {
	if len(data) == 0 {
		return nil, errors.New("roots are empty; give the step-ca's root certificate (PEM)")
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("root %d: %w", n+1, err)
		}
		if !cert.IsCA {
			return nil, fmt.Errorf("root %d (%.80q) is not a CA certificate", n+1, cert.Subject.CommonName)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("roots hold no PEM certificate")
	}
	return pool, nil
}
