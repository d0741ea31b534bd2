package pki_test

import (
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
)

// verifyChain verifies a leaf with the intermediates of its chain against
// roots for client authentication at now.
func verifyChain(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// A device certificate and bundle issued before a rotation keep verifying
// against the unchanged root; those issued after chain through the new
// intermediate. No device is re-enrolled.
func TestRotateIntermediate(t *testing.T) {
	ca, dir := newCA(t, t0)
	roots := ca.RootPool()
	id := deviceID("rotation")
	dev := newP256(t)
	before, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: id, PublicKey: &dev.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	bundleBefore, err := ca.SignBundle(pki.Bundle{DeviceID: id, Version: 1, IssuedAt: t0, ExpiresAt: t0.Add(48 * time.Hour), Config: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}

	t1 := t0.Add(time.Hour)
	rot, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t1)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rot.OldIntermediate.Equal(ca.Intermediate()) || rot.NewIntermediate.Equal(ca.Intermediate()) {
		t.Fatal("rotation report does not name the old and a new intermediate")
	}
	if string(rot.NewIntermediate.RawSubject) != string(ca.Intermediate().RawSubject) || string(rot.NewBundleSigner.RawSubject) != string(ca.BundleSigner().RawSubject) {
		t.Error("the new certificates have other subjects")
	}
	if want := t1.Add(pki.DefaultIntermediateLifetime); !rot.NewIntermediate.NotAfter.Equal(want) {
		t.Errorf("new intermediate NotAfter = %s; want %s", rot.NewIntermediate.NotAfter, want)
	}

	t2 := t1.Add(time.Hour)
	rotated, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t2)})
	if err != nil {
		t.Fatalf("loading the rotated CA: %v", err)
	}
	if !rotated.Root().Equal(ca.Root()) || !rotated.Intermediate().Equal(rot.NewIntermediate) || !rotated.BundleSigner().Equal(rot.NewBundleSigner) {
		t.Fatal("the rotated CA has another root, or not the new intermediate and bundle signer")
	}
	after, err := rotated.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: id, PublicKey: &dev.PublicKey})
	if err != nil {
		t.Fatal(err)
	}

	// Before the rotation: still valid, through the old intermediate.
	if err := verifyChain(before.Chain, roots, t2); err != nil {
		t.Errorf("certificate issued before the rotation: %v", err)
	}
	// After: through the new intermediate, and only through it.
	if !after.Chain[1].Equal(rot.NewIntermediate) || after.Leaf.CheckSignatureFrom(rot.NewIntermediate) != nil {
		t.Error("certificate issued after the rotation is not signed by the new intermediate")
	}
	if err := verifyChain(after.Chain, roots, t2); err != nil {
		t.Errorf("certificate issued after the rotation: %v", err)
	}
	if err := verifyChain([]*x509.Certificate{after.Leaf, rot.OldIntermediate}, roots, t2); err == nil {
		t.Error("certificate issued after the rotation verifies through the old intermediate")
	}

	// Bundles: the cached one still verifies; new ones carry the new chain.
	if _, err := pki.VerifyBundle(bundleBefore, roots, id, t2); err != nil {
		t.Errorf("bundle signed before the rotation: %v", err)
	}
	bundleAfter, err := rotated.SignBundle(pki.Bundle{DeviceID: id, Version: 2, IssuedAt: t2, ExpiresAt: t2.Add(time.Hour), Config: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.VerifyBundle(bundleAfter, roots, id, t2); err != nil {
		t.Errorf("bundle signed after the rotation: %v", err)
	}

	// CRLs come from the new intermediate, under the same issuer name.
	der, err := rotated.SignCRL(pki.CRLRequest{Number: 1, ThisUpdate: t2, NextUpdate: t2.Add(time.Hour), Revoked: []pki.RevokedCertificate{{Serial: big.NewInt(7), RevokedAt: t2}}})
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil || crl.CheckSignatureFrom(rot.NewIntermediate) != nil || string(crl.RawIssuer) != string(ca.Intermediate().RawSubject) {
		t.Errorf("crl: %v; want it signed by the new intermediate under the old name", err)
	}

	// The archive holds the replaced files, keys still 0600.
	for _, name := range []string{pki.IntermediateCertFile, pki.IntermediateKeyFile, pki.BundleSignerCertFile, pki.BundleSignerKeyFile} {
		fi, err := os.Stat(filepath.Join(rot.Archive, name))
		if err != nil {
			t.Errorf("archive: %v", err)
			continue
		}
		if strings.HasSuffix(name, ".key") && fi.Mode().Perm() != 0o600 {
			t.Errorf("archived %s has mode %#o", name, fi.Mode().Perm())
		}
	}
	if filepath.Dir(filepath.Dir(rot.Archive)) != dir {
		t.Errorf("archive %s is not under %s", rot.Archive, dir)
	}
}

// Rotating into a KMS: the new intermediate key is named by a URI and no
// key file is left in the CA directory.
func TestRotateIntermediateIntoKMS(t *testing.T) {
	_, dir := newCA(t, t0)
	interURI, interKey := writeKeyFile(t, elliptic.P256())
	rot, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t0)}, &pki.RotateOptions{IntermediateKeyURI: interURI})
	if err != nil {
		t.Fatal(err)
	}
	if !interKey.PublicKey.Equal(rot.NewIntermediate.PublicKey) {
		t.Fatal("the new intermediate is not for the KMS key")
	}
	if _, err := os.Stat(filepath.Join(dir, pki.IntermediateKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is still in the CA directory: %v", pki.IntermediateKeyFile, err)
	}
	ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0), IntermediateKeyURI: interURI})
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	checkIssuesAndSigns(t, ca)

	// And once more, from the KMS key to a new file key.
	if _, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t0.Add(time.Second)), IntermediateKeyURI: interURI}, nil); err != nil {
		t.Fatal(err)
	}
	back, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	checkIssuesAndSigns(t, back)
}

func TestRotateIntermediateRefusals(t *testing.T) {
	t.Run("the current key again", func(t *testing.T) {
		_, dir := newCA(t, t0)
		current := readKey(t, dir, pki.IntermediateKeyFile)
		path := filepath.Join(t.TempDir(), "current.pem")
		writePEMKey(t, path, current)
		_, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t0)}, &pki.RotateOptions{IntermediateKeyURI: "softkms:path=" + path})
		if !errors.Is(err, pki.ErrOptions) || !strings.Contains(err.Error(), "current one") {
			t.Fatalf("err = %v; want ErrOptions", err)
		}
	})
	t.Run("incomplete directory", func(t *testing.T) {
		_, dir := newCA(t, t0)
		os.Remove(filepath.Join(dir, pki.BundleSignerCertFile))
		if _, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t0)}, nil); !errors.Is(err, pki.ErrCAIncomplete) {
			t.Fatalf("err = %v; want ErrCAIncomplete", err)
		}
	})
	t.Run("no CA", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "ca")
		if _, err := pki.RotateIntermediate(dir, nil, nil); !errors.Is(err, pki.ErrCAIncomplete) {
			t.Fatalf("err = %v; want ErrCAIncomplete", err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Error("rotation created a directory")
		}
	})
	t.Run("root expired", func(t *testing.T) {
		_, dir := newCA(t, t0)
		_, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t0.Add(pki.DefaultRootLifetime))}, nil)
		if !errors.Is(err, pki.ErrCAExpired) {
			t.Fatalf("err = %v; want ErrCAExpired", err)
		}
	})
	t.Run("the intermediate never outlives the root", func(t *testing.T) {
		ca, dir := newCA(t, t0)
		late := ca.Root().NotAfter.Add(-24 * time.Hour)
		rot, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(late)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !rot.NewIntermediate.NotAfter.Equal(ca.Root().NotAfter) {
			t.Errorf("new intermediate NotAfter = %s; want the root's %s", rot.NewIntermediate.NotAfter, ca.Root().NotAfter)
		}
	})
}
