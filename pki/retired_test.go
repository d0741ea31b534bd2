package pki_test

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/pki"
)

// rotatedCA is a new CA whose intermediate was rotated at t0.
func rotatedCA(t *testing.T) (dir string, rot *pki.Rotation) {
	t.Helper()
	_, dir = newCA(t, t0)
	rot, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t0)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return dir, rot
}

// revokedBy answers as a relying party that checks revocation: it takes
// the CRL whose issuer name and key identifier are leaf's and whose
// signature verifies with issuer, then looks for leaf's serial. found is
// false when no CRL covers leaf (a relying party that requires one
// refuses the certificate).
func revokedBy(t *testing.T, crls [][]byte, leaf, issuer *x509.Certificate) (revoked, found bool) {
	t.Helper()
	for _, der := range crls {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(crl.RawIssuer, leaf.RawIssuer) || !bytes.Equal(crl.AuthorityKeyId, leaf.AuthorityKeyId) || crl.CheckSignatureFrom(issuer) != nil {
			continue
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
				return true, true
			}
		}
		return false, true
	}
	return false, false
}

// After a rotation, certificates the old intermediate issued are still
// covered by a CRL: the CA signs one with each issuer, and a revoked
// certificate of either is found revoked on its own issuer's list.
func TestCRLAfterRotation(t *testing.T) {
	ca, dir := newCA(t, t0)
	dev := newP256(t)
	issue := func(ca *pki.CA, id string) *pki.Issued {
		t.Helper()
		c, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: deviceID(id), PublicKey: &dev.PublicKey})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	before, kept := issue(ca, "before"), issue(ca, "kept")
	t1 := t0.Add(time.Hour)
	rot, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t1)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t2 := t1.Add(time.Hour)
	rotated, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t2)})
	if err != nil {
		t.Fatal(err)
	}
	after := issue(rotated, "after")

	retired := rotated.RetiredIntermediates()
	if len(retired) != 1 || !retired[0].Certificate.Equal(rot.OldIntermediate) || !retired[0].CanSignCRL || retired[0].Archive != rot.Archive {
		t.Fatalf("retired intermediates %+v; want the old one, able to sign, from %s", retired, rot.Archive)
	}
	if !retired[0].MayHaveValidCertificates(t2) || retired[0].MayHaveValidCertificates(t1.Add(pki.MaxLeafLifetime+time.Second)) {
		t.Error("MayHaveValidCertificates: want true within MaxLeafLifetime of the rotation, false after")
	}

	req := pki.CRLRequest{Number: 9, ThisUpdate: t2, NextUpdate: t2.Add(time.Hour), Revoked: []pki.RevokedCertificate{
		{Serial: before.Leaf.SerialNumber, RevokedAt: t2, ReasonCode: pki.ReasonKeyCompromise},
		{Serial: after.Leaf.SerialNumber, RevokedAt: t2},
	}}
	crls, err := rotated.SignCRLs(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(crls) != 2 {
		t.Fatalf("%d CRLs; want the new and the retired intermediate's", len(crls))
	}
	for _, c := range []struct {
		name    string
		leaf    *x509.Certificate
		issuer  *x509.Certificate
		revoked bool
	}{
		{"revoked before the rotation", before.Leaf, rot.OldIntermediate, true},
		{"not revoked, before the rotation", kept.Leaf, rot.OldIntermediate, false},
		{"revoked after the rotation", after.Leaf, rot.NewIntermediate, true},
	} {
		revoked, found := revokedBy(t, crls, c.leaf, c.issuer)
		if !found || revoked != c.revoked {
			t.Errorf("%s: covered by a CRL %v, revoked %v; want covered, revoked %v", c.name, found, revoked, c.revoked)
		}
	}
	// The new intermediate's list alone, what SignCRL signed before,
	// covers none of the old intermediate's certificates.
	if _, found := revokedBy(t, crls[:1], before.Leaf, rot.OldIntermediate); found {
		t.Error("the new intermediate's CRL claims to cover a certificate of the old one")
	}
	for i, der := range crls {
		crl, _ := x509.ParseRevocationList(der)
		if crl.Number.Cmp(big.NewInt(9)) != 0 || !crl.NextUpdate.Equal(req.NextUpdate) {
			t.Errorf("CRL %d: number %v, next update %s; want the request's", i, crl.Number, crl.NextUpdate)
		}
	}

	// Once the old intermediate has expired, so has all it issued: it is
	// no longer listed, nor signs.
	late := rot.OldIntermediate.NotAfter.Add(time.Minute)
	expired, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(late)})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(expired.RetiredIntermediates()); n != 0 {
		t.Errorf("%d retired intermediates after the old one expired", n)
	}
	if crls, err := expired.SignCRLs(pki.CRLRequest{Number: 10, ThisUpdate: late, NextUpdate: late.Add(time.Hour)}); err != nil || len(crls) != 1 {
		t.Errorf("after the old intermediate expired: %d CRLs, %v; want 1", len(crls), err)
	}
}

// The retired intermediate's key: gone from the archive, its CRL is not
// signed and RetiredIntermediates says so; another key in its place is a
// corrupt CA; a key moved into a KMS is found by its URI.
func TestRetiredIntermediateKey(t *testing.T) {
	t.Run("deleted", func(t *testing.T) {
		dir, rot := rotatedCA(t)
		if err := os.Remove(filepath.Join(rot.Archive, pki.IntermediateKeyFile)); err != nil {
			t.Fatal(err)
		}
		ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0)})
		if err != nil {
			t.Fatal(err)
		}
		if r := ca.RetiredIntermediates(); len(r) != 1 || r[0].CanSignCRL {
			t.Errorf("retired %+v; want one that cannot sign", r)
		}
		if crls, err := ca.SignCRLs(pki.CRLRequest{Number: 1, ThisUpdate: t0, NextUpdate: t0.Add(time.Hour)}); err != nil || len(crls) != 1 {
			t.Errorf("%d CRLs, %v; want the new intermediate's only", len(crls), err)
		}
	})
	t.Run("replaced", func(t *testing.T) {
		dir, rot := rotatedCA(t)
		_, otherDir := newCA(t, t0) // its intermediate key goes into the archive
		data, err := os.ReadFile(filepath.Join(otherDir, pki.IntermediateKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(rot.Archive, pki.IntermediateKeyFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0)}); !errors.Is(err, pki.ErrCACorrupt) {
			t.Errorf("archive with another key: %v; want ErrCACorrupt", err)
		}
	})
	t.Run("kms", func(t *testing.T) {
		_, dir := newCA(t, t0)
		interURI, _ := writeKeyFile(t, elliptic.P256())
		if _, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t0)}, &pki.RotateOptions{IntermediateKeyURI: interURI}); err != nil {
			t.Fatal(err)
		}
		t1 := t0.Add(time.Second)
		rot, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t1), IntermediateKeyURI: interURI}, nil)
		if err != nil {
			t.Fatal(err)
		}
		find := func(ca *pki.CA) pki.RetiredIntermediate {
			t.Helper()
			for _, r := range ca.RetiredIntermediates() {
				if r.Certificate.Equal(rot.OldIntermediate) {
					return r
				}
			}
			t.Fatal("the intermediate whose key is in the KMS is not listed as retired")
			return pki.RetiredIntermediate{}
		}
		without, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t1)})
		if err != nil {
			t.Fatal(err)
		}
		if find(without).CanSignCRL {
			t.Error("a retired KMS key is used without being named")
		}
		with, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t1), RetiredIntermediateKeyURIs: []string{interURI}})
		if err != nil {
			t.Fatal(err)
		}
		defer with.Close()
		if !find(with).CanSignCRL {
			t.Error("the retired key named by its URI is not used")
		}
		crls, err := with.SignCRLs(pki.CRLRequest{Number: 1, ThisUpdate: t1, NextUpdate: t1.Add(time.Hour)})
		if err != nil || len(crls) != 3 { // new, KMS-held, and the first file key still archived
			t.Errorf("%d CRLs, %v; want 3", len(crls), err)
		}
		if _, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t1), RetiredIntermediateKeyURIs: []string{""}}); !errors.Is(err, pki.ErrOptions) {
			t.Errorf("empty retired key URI: %v; want ErrOptions", err)
		}
	})
}

// The archive is checked and merged: an intermediate of another root is a
// corrupt CA; one archived twice is one retired intermediate, retired at
// the later time, with the key either archive holds; one back in service
// (a rollback) is not retired; one that expires while the CA runs stops
// signing.
func TestRetiredArchive(t *testing.T) {
	copyArchive := func(t *testing.T, from, to string, names ...string) {
		t.Helper()
		if err := os.MkdirAll(to, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			data, err := os.ReadFile(filepath.Join(from, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(to, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("another root", func(t *testing.T) {
		_, dir := newCA(t, t0)
		_, other := newCA(t, t0)
		copyArchive(t, other, filepath.Join(dir, pki.ArchiveDir, "20250101T000000Z"), pki.IntermediateCertFile, pki.IntermediateKeyFile)
		if _, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0)}); !errors.Is(err, pki.ErrCACorrupt) {
			t.Errorf("an archived intermediate of another root: %v; want ErrCACorrupt", err)
		}
	})
	t.Run("archived twice", func(t *testing.T) {
		dir, rot := rotatedCA(t)
		later := filepath.Join(dir, pki.ArchiveDir, t0.Add(time.Hour).UTC().Format("20060102T150405Z"))
		copyArchive(t, rot.Archive, later, pki.IntermediateCertFile, pki.IntermediateKeyFile)
		if err := os.Remove(filepath.Join(rot.Archive, pki.IntermediateKeyFile)); err != nil {
			t.Fatal(err)
		}
		ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0.Add(2 * time.Hour))})
		if err != nil {
			t.Fatal(err)
		}
		r := ca.RetiredIntermediates()
		if len(r) != 1 || !r[0].CanSignCRL || !r[0].RetiredAt.Equal(t0.Add(time.Hour).Truncate(time.Second)) || r[0].Archive != later {
			t.Fatalf("retired %+v; want one, able to sign, retired at the later archive's time", r)
		}
	})
	t.Run("back in service", func(t *testing.T) {
		dir, rot := rotatedCA(t)
		// The documented rollback: the archived files copied back.
		copyArchive(t, rot.Archive, dir, pki.IntermediateCertFile, pki.IntermediateKeyFile, pki.BundleSignerCertFile, pki.BundleSignerKeyFile)
		ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0)})
		if err != nil {
			t.Fatal(err)
		}
		if r := ca.RetiredIntermediates(); len(r) != 0 || !ca.Intermediate().Equal(rot.OldIntermediate) {
			t.Errorf("after a rollback: retired %+v; want none, the old intermediate in service", r)
		}
	})
	t.Run("expires while running", func(t *testing.T) {
		_, dir := newCA(t, t0)
		rot, err := pki.RotateIntermediate(dir, &pki.Options{Now: fixedClock(t0.Add(time.Hour))}, nil)
		if err != nil {
			t.Fatal(err)
		}
		now := t0.Add(2 * time.Hour)
		ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		sign := func() int {
			crls, err := ca.SignCRLs(pki.CRLRequest{Number: 1, ThisUpdate: now, NextUpdate: now.Add(time.Hour)})
			if err != nil {
				t.Fatal(err)
			}
			return len(crls)
		}
		if n := sign(); n != 2 {
			t.Fatalf("%d CRLs before the old intermediate expired; want 2", n)
		}
		now = rot.OldIntermediate.NotAfter
		if n := sign(); n != 1 {
			t.Errorf("%d CRLs once the old intermediate expired; want 1", n)
		}
	})
	t.Run("kms uri that matches nothing", func(t *testing.T) {
		dir, rot := rotatedCA(t)
		if err := os.Remove(filepath.Join(rot.Archive, pki.IntermediateKeyFile)); err != nil {
			t.Fatal(err)
		}
		wrongURI, _ := writeKeyFile(t, elliptic.P256())
		ca, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0), RetiredIntermediateKeyURIs: []string{wrongURI}})
		if err != nil {
			t.Fatal(err)
		}
		defer ca.Close()
		if r := ca.RetiredIntermediates(); len(r) != 1 || r[0].CanSignCRL {
			t.Errorf("retired %+v; the wrong key must not be used", r)
		}
		if u := ca.UnmatchedRetiredKeyURIs(); len(u) != 1 {
			t.Errorf("unmatched URIs %v; want the wrong one", u)
		}
	})
	t.Run("kms uri not needed", func(t *testing.T) {
		dir, _ := rotatedCA(t)
		// The retired key is archived, so a URI of a destroyed key left
		// in the configuration is never opened.
		gone := "softkms:path=" + filepath.Join(t.TempDir(), "destroyed.key")
		if _, err := pki.LoadOrCreateCA(dir, &pki.Options{Now: fixedClock(t0), RetiredIntermediateKeyURIs: []string{gone}}); err != nil {
			t.Errorf("a stale retired key URI nothing needs: %v", err)
		}
	})
}
