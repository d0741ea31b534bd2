package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"time"
)

// renewingCert is a certificate enrolld issues itself from its CA and
// presents for as long as it runs: its HTTPS and MQTT server certificate,
// its client certificate for an external broker. It is issued again at
// the first handshake after half of its lifetime has passed.
type renewingCert struct {
	what  string // for errors
	issue func() (*tls.Certificate, error)
	now   func() time.Time // nil: time.Now
	mu    sync.Mutex
	cert  *tls.Certificate
}

func (r *renewingCert) get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	if c := r.cert; c != nil && now().Before(c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)/2)) {
		return c, nil
	}
	c, err := r.issue()
	if err != nil {
		return nil, fmt.Errorf("issuing %s: %w", r.what, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, err
		}
	}
	r.cert = c
	return c, nil
}
