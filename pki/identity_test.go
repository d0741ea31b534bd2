package pki_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"

	"github.com/edgeenroll/edgeenroll/pki"
)

func TestDeviceURI(t *testing.T) {
	id := deviceID("uri")
	if got, want := pki.DeviceURI("edgeenroll.local", id).String(), "spiffe://edgeenroll.local/device/"+id; got != want {
		t.Errorf("DeviceURI = %s, want %s", got, want)
	}
}

func TestDeviceIDFromCertificate(t *testing.T) {
	const td = "edgeenroll.local"
	id := deviceID("identity")
	other := deviceID("someone else")
	cert := func(cn string, uris ...string) *x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, u)
		}
		return c
	}
	good := "spiffe://" + td + "/device/" + id

	tests := []struct {
		name    string
		cert    *x509.Certificate
		td      string
		wantErr error
	}{
		{"valid", cert(id, good), td, nil},
		{"wrong trust domain", cert(id, "spiffe://other.example/device/"+id), td, pki.ErrDeviceIdentity},
		{"checked against another trust domain", cert(id, good), "other.example", pki.ErrDeviceIdentity},
		{"common name mismatch", cert(other, good), td, pki.ErrDeviceIdentity},
		{"empty common name", cert("", good), td, pki.ErrDeviceIdentity},
		{"two URIs", cert(id, good, good), td, pki.ErrDeviceIdentity},
		{"two different URIs", cert(id, good, "spiffe://"+td+"/device/"+other), td, pki.ErrDeviceIdentity},
		{"no URI", cert(id), td, pki.ErrDeviceIdentity},
		{"https scheme", cert(id, "https://"+td+"/device/"+id), td, pki.ErrDeviceIdentity},
		{"port", cert(id, "spiffe://"+td+":443/device/"+id), td, pki.ErrDeviceIdentity},
		{"user info", cert(id, "spiffe://admin@"+td+"/device/"+id), td, pki.ErrDeviceIdentity},
		{"query", cert(id, good+"?x=1"), td, pki.ErrDeviceIdentity},
		{"fragment", cert(id, good+"#x"), td, pki.ErrDeviceIdentity},
		{"uppercase trust domain", cert(id, "spiffe://EdgeEnroll.local/device/"+id), td, pki.ErrDeviceIdentity},
		{"not a device path", cert(id, "spiffe://"+td+"/server/"+id), td, pki.ErrDeviceIdentity},
		{"extra path segment", cert(id+"/x", good+"/x"), td, pki.ErrDeviceIdentity},
		{"escaped path", cert(id, "spiffe://"+td+"/device/%61"+id[1:]), td, pki.ErrDeviceIdentity},
		{"uppercase device id", cert("AB"+id[2:], "spiffe://"+td+"/device/AB"+id[2:]), td, pki.ErrDeviceIdentity},
		{"short device id", cert("abc", "spiffe://"+td+"/device/abc"), td, pki.ErrDeviceIdentity},
		{"nil certificate", nil, td, pki.ErrDeviceIdentity},
		{"invalid trust domain argument", cert(id, good), "", pki.ErrDeviceIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pki.DeviceIDFromCertificate(tt.cert, tt.td)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && got != id {
				t.Errorf("id = %q, want %q", got, id)
			}
			if err != nil && got != "" {
				t.Errorf("id = %q with an error, want empty", got)
			}
		})
	}
}

func TestValidateTrustDomain(t *testing.T) {
	for _, td := range []string{"edgeenroll.local", "a", "factory_7-eu.example.com"} {
		if err := pki.ValidateTrustDomain(td); err != nil {
			t.Errorf("ValidateTrustDomain(%q) = %v, want nil", td, err)
		}
	}
	for _, td := range []string{"", "Example.com", "a/b", "a:1", "ä.example", string(make([]byte, 256))} {
		if err := pki.ValidateTrustDomain(td); !errors.Is(err, pki.ErrTrustDomain) {
			t.Errorf("ValidateTrustDomain(%.20q) = %v, want ErrTrustDomain", td, err)
		}
	}
}
