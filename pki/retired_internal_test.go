package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"
)

// failingSigner is a key whose token is gone.
type failingSigner struct{ crypto.Signer }

func (failingSigner) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("token removed")
}

// A retired key that cannot sign costs only its own list: the current
// intermediate's is still signed and returned, with an error naming the
// retired one.
func TestSignCRLsRetiredKeyFails(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	dir := filepath.Join(t.TempDir(), "ca")
	opts := &Options{Now: func() time.Time { return now }}
	if _, err := LoadOrCreateCA(dir, opts); err != nil {
		t.Fatal(err)
	}
	if _, err := RotateIntermediate(dir, opts, nil); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadOrCreateCA(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(ca.retired) != 1 || ca.retired[0].key == nil {
		t.Fatalf("retired %+v; want one with its key", ca.retired)
	}
	ca.retired[0].key = failingSigner{ca.retired[0].key}
	crls, err := ca.SignCRLs(CRLRequest{Number: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour)})
	if len(crls) != 1 || err == nil {
		t.Fatalf("%d CRLs, %v; want the current one and an error", len(crls), err)
	}
	if crl, perr := x509.ParseRevocationList(crls[0]); perr != nil || crl.CheckSignatureFrom(ca.intermediate) != nil {
		t.Errorf("the returned list is not the current intermediate's: %v", perr)
	}
}
