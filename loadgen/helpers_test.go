package loadgen_test

import (
	"crypto/x509"
	"time"

	"github.com/edgeenroll/edgeenroll/tpmsim"
)

func poolOf(m *tpmsim.Manufacturer) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(m.Certificate)
	return p
}

func nowish() time.Time { return time.Now() }
