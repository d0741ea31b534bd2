package loadgen

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/edgeenroll/edgeenroll/device"
)

// signTimeout bounds one TLS handshake signature made in a worker's TPM
// (crypto.Signer has no context), queueing included.
const signTimeout = 30 * time.Second

// Certificates are the device certificates a run's enrollments were issued,
// each with a private key that signs in its device's TPM through the
// Answerer. With them a renewal presents the device's certificate over
// mutual TLS, as the agent does (device.Agent.TLSCertificate), so the
// server's cost of a renewal includes verifying the client certificate
// and its handshake signature.
type Certificates struct {
	a  Answerer
	mu sync.Mutex
	m  map[int]*tls.Certificate // by Identity.Index
}

// NewCertificates returns an empty set whose keys sign through a.
func NewCertificates(a Answerer) *Certificates {
	return &Certificates{a: a, m: map[int]*tls.Certificate{}}
}

// For is id's certificate source for a transport: the certificate of its
// last enrollment in this run, if any (until then it presents none).
func (c *Certificates) For(id *Identity) device.CertificateSource {
	return certSource{c: c, id: id}
}

// put records chain (leaf first, DER), issued to id for its TPM key.
func (c *Certificates) put(id *Identity, chain [][]byte) error {
	if len(chain) == 0 {
		return errors.New("no certificate chain")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return fmt.Errorf("parsing the issued certificate: %w", err)
	}
	cert := &tls.Certificate{Certificate: chain, Leaf: leaf, PrivateKey: tpmSigner{a: c.a, id: id, pub: leaf.PublicKey}}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[id.Index] = cert
	return nil
}

type certSource struct {
	c  *Certificates
	id *Identity
}

func (s certSource) TLSCertificate() (*tls.Certificate, error) {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	cert := s.c.m[s.id.Index]
	if cert == nil {
		return nil, fmt.Errorf("device %d has not enrolled in this run", s.id.Index)
	}
	return cert, nil
}

// tpmSigner is a device's TPM key as a crypto.Signer: each signature is
// made in a worker's TPM.
type tpmSigner struct {
	a   Answerer
	id  *Identity
	pub crypto.PublicKey
}

func (s tpmSigner) Public() crypto.PublicKey { return s.pub }

func (s tpmSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), signTimeout)
	defer cancel()
	return s.a.Sign(ctx, s.id, digest, opts.HashFunc())
}
