package attest_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"math/big"
	"regexp"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/attest"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

func mustPKIX(t testing.TB, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestParseEKPublic(t *testing.T) {
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)

	good := mustPKIX(t, &rsa2048.PublicKey)
	tests := []struct {
		name string
		der  []byte
		want attest.Reason // 0: accepted
	}{
		{"RSA-2048", good, 0},
		{"ECDSA P-256", mustPKIX(t, &p256.PublicKey), 0},
		{"ECDSA P-384", mustPKIX(t, &p384.PublicKey), 0},
		{"RSA-1024", mustPKIX(t, &rsa1024.PublicKey), attest.ReasonEKWeak},
		{"ECDSA P-224", mustPKIX(t, &p224.PublicKey), attest.ReasonEKWeak},
		{"Ed25519", mustPKIX(t, edPub), attest.ReasonEKWeak},
		{"empty", nil, attest.ReasonMalformed},
		{"garbage", []byte("not a key"), attest.ReasonMalformed},
		{"trailing byte", append(bytes.Clone(good), 0), attest.ReasonMalformed},
		{"truncated", good[:len(good)-1], attest.ReasonMalformed},
		{"oversized", make([]byte, attest.MaxPublicKeySize+1), attest.ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pub, err := attest.ParseEKPublic(tc.der)
			if tc.want == 0 {
				if err != nil {
					t.Fatalf("ParseEKPublic: %v", err)
				}
				if !bytes.Equal(mustPKIX(t, pub), tc.der) {
					t.Error("parsed key re-encodes differently")
				}
				return
			}
			if pub != nil {
				t.Error("ParseEKPublic returned a key with an error")
			}
			wantReason(t, err, tc.want)
		})
	}
}

func TestDeviceID(t *testing.T) {
	k1, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	id1, err := attest.DeviceID(&k1.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id1) {
		t.Errorf("DeviceID = %q, want 64 lowercase hex digits", id1)
	}
	sum := sha256.Sum256(mustPKIX(t, &k1.PublicKey))
	if want := hex.EncodeToString(sum[:]); id1 != want {
		t.Errorf("DeviceID = %s, want SHA-256 of PKIX DER %s", id1, want)
	}
	// Stable: the same key, parsed again from its encoding, gives the same ID.
	reparsed, err := attest.ParseEKPublic(mustPKIX(t, &k1.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := attest.DeviceID(reparsed); again != id1 {
		t.Errorf("DeviceID not stable: %s then %s", id1, again)
	}
	if id2, _ := attest.DeviceID(&k2.PublicKey); id2 == id1 {
		t.Error("two keys share a DeviceID")
	}
	if _, err := attest.DeviceID(struct{}{}); err == nil {
		t.Error("DeviceID of a non-key succeeded")
	}
}

func TestDeviceIDOfSimulatedTPMIsStable(t *testing.T) {
	f := needTPM(t)
	id, err := attest.DeviceID(f.ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	eks, err := f.tpm.EKs()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := attest.DeviceID(eks[0].Public); again != id {
		t.Errorf("DeviceID of the same TPM changed: %s then %s", id, again)
	}
}

// issueRaw signs an EK certificate template directly with the
// manufacturer's key, for forgeries tpmsim does not offer.
func issueRaw(t *testing.T, m *tpmsim.Manufacturer, ekPub crypto.PublicKey, tmpl *x509.Certificate) []byte {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(7)
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.Certificate, ekPub, m.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func tcgSAN(t *testing.T) pkix.Extension {
	t.Helper()
	san, err := tpmsim.TCGSubjectAltName("id:4D534654", "model", "id:00000001")
	if err != nil {
		t.Fatal(err)
	}
	return san
}

func TestVerifyEKCertificate(t *testing.T) {
	f := needTPM(t)
	now := time.Now()
	info, err := attest.VerifyEKCertificate(f.ek.Certificate.Raw, f.ek.Public, f.roots, nil, now)
	if err != nil {
		t.Fatalf("VerifyEKCertificate: %v", err)
	}
	if info.Manufacturer != tpmsim.DefaultTPMManufacturer || info.Model != tpmsim.DefaultTPMModel || info.Version != tpmsim.DefaultTPMVersion {
		t.Errorf("info = %q %q %q, want the tpmsim defaults", info.Manufacturer, info.Model, info.Version)
	}

	t.Run("through an intermediate", func(t *testing.T) {
		interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		interDER := issueRaw(t, f.mfr, &interKey.PublicKey, &x509.Certificate{
			Subject:               pkix.Name{CommonName: "EK intermediate"},
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign,
		})
		inter, err := x509.ParseCertificate(interDER)
		if err != nil {
			t.Fatal(err)
		}
		sub := &tpmsim.Manufacturer{Certificate: inter, Key: interKey}
		der, err := sub.IssueEKCertificate(f.ek.Public)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(inter)
		info, err := attest.VerifyEKCertificate(der, f.ek.Public, f.roots, pool, now)
		if err != nil {
			t.Fatalf("with intermediate: %v", err)
		}
		// The window is the chain's: it opens with the leaf (made last)
		// and closes with the intermediate (valid for an hour only).
		leaf, _ := x509.ParseCertificate(der)
		if !info.ValidFrom.Equal(leaf.NotBefore) || !info.ValidUntil.Equal(inter.NotAfter) {
			t.Errorf("validity %v..%v, want the leaf's NotBefore %v to the intermediate's NotAfter %v",
				info.ValidFrom, info.ValidUntil, leaf.NotBefore, inter.NotAfter)
		}
		_, err = attest.VerifyEKCertificate(der, f.ek.Public, f.roots, nil, now)
		wantReason(t, err, attest.ReasonEKUntrusted)
	})

	t.Run("ECC EK with multi-RDN subjectAltName", func(t *testing.T) {
		ecEK, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		// Some vendors put each TPM attribute in its own RDN.
		utf8 := func(s string) asn1.RawValue {
			return asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(s)}
		}
		name, _ := asn1.Marshal(pkix.RDNSequence{
			{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: utf8("id:53544D20")}},
			{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: utf8("ST33")}},
			{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: utf8("id:00010102")}},
			{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 15}, Value: utf8("optional TPM ID label")}},
		})
		value, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
		der := issueRaw(t, f.mfr, &ecEK.PublicKey, &x509.Certificate{
			ExtraExtensions:    []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: value}},
			UnknownExtKeyUsage: []asn1.ObjectIdentifier{tpmsim.OIDEKCertificate},
			KeyUsage:           x509.KeyUsageKeyAgreement,
		})
		info, err := attest.VerifyEKCertificate(der, &ecEK.PublicKey, f.roots, nil, now)
		if err != nil {
			t.Fatal(err)
		}
		if info.Model != "ST33" {
			t.Errorf("model = %q", info.Model)
		}
	})
}

// TestVerifyEKCertificateValidityAcrossChains: with two chains (the same
// intermediate key certified by two roots), the window is that of the
// chain valid latest, and the certificate verifies at both of its ends.
func TestVerifyEKCertificateValidityAcrossChains(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	intermediate := func(root string, serial int64, notBefore, notAfter time.Time) *x509.Certificate {
		r, err := tpmsim.NewManufacturer(root)
		if err != nil {
			t.Fatal(err)
		}
		roots.AddCert(r.Certificate)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "EK intermediate"},
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
			NotBefore: notBefore, NotAfter: notAfter,
		}, r.Certificate, &key.PublicKey, r.Key)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inters.AddCert(c)
		return c
	}
	intermediate("short-lived root", 1, now.Add(-2*time.Hour), now.Add(time.Hour))
	long := intermediate("long-lived root", 2, now.Add(-30*time.Minute), now.AddDate(10, 0, 0))
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := (&tpmsim.Manufacturer{Certificate: long, Key: key}).IssueEKCertificate(&ek.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	info, err := attest.VerifyEKCertificate(der, &ek.PublicKey, roots, inters, now)
	if err != nil {
		t.Fatal(err)
	}
	if !info.ValidFrom.Equal(long.NotBefore) || !info.ValidUntil.Equal(long.NotAfter) {
		t.Errorf("validity %v..%v, want the long-lived chain's %v..%v", info.ValidFrom, info.ValidUntil, long.NotBefore, long.NotAfter)
	}
	for _, at := range []time.Time{info.ValidFrom, info.ValidUntil} {
		if _, err := attest.VerifyEKCertificate(der, &ek.PublicKey, roots, inters, at); err != nil {
			t.Errorf("at %v, an end of the window: %v", at, err)
		}
	}
	_, err = attest.VerifyEKCertificate(der, &ek.PublicKey, roots, inters, info.ValidUntil.Add(time.Second))
	wantReason(t, err, attest.ReasonEKUntrusted)
}

func TestVerifyEKCertificateRejects(t *testing.T) {
	f := needTPM(t)
	now := time.Now()
	ekPub := f.ek.Public
	good := f.ek.Certificate.Raw

	otherMfr, err := tpmsim.NewManufacturer("unknown TPM manufacturer")
	if err != nil {
		t.Fatal(err)
	}
	fromUnknownRoot, err := otherMfr.IssueEKCertificate(ekPub)
	if err != nil {
		t.Fatal(err)
	}
	otherEK, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	weakEK, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weakCert := issueRaw(t, f.mfr, &weakEK.PublicKey, &x509.Certificate{
		ExtraExtensions:    []pkix.Extension{tcgSAN(t)},
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{tpmsim.OIDEKCertificate},
	})
	issue := func(opts *tpmsim.EKCertificateOptions) []byte {
		t.Helper()
		der, err := f.mfr.IssueEKCertificateWithOptions(ekPub, opts)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	unknownCritical := pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Critical: true, Value: []byte{0x05, 0x00}}
	serverAuthEKU, _ := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 1}})
	dnsSAN, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 2, Bytes: []byte("tpm.example")}})
	oneAttrName, _ := asn1.Marshal(pkix.RDNSequence{{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: "id:4D534654"}}})
	oneAttrSAN, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: oneAttrName}})
	intAttrName, _ := asn1.Marshal(pkix.RDNSequence{{
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: 5},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: "m"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: "v"},
	}})
	intAttrSAN, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: intAttrName}})
	extraAttrName, _ := asn1.Marshal(pkix.RDNSequence{{
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 1}, Value: "id:4D534654"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 2}, Value: "m"},
		{Type: asn1.ObjectIdentifier{2, 23, 133, 2, 3}, Value: "v"},
		{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "cn"},
	}})
	extraAttrSAN, _ := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: extraAttrName}})
	customSAN := func(value []byte) []byte {
		return issueRaw(t, f.mfr, ekPub, &x509.Certificate{
			ExtraExtensions:    []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: value}},
			UnknownExtKeyUsage: []asn1.ObjectIdentifier{tpmsim.OIDEKCertificate},
		})
	}

	tests := []struct {
		name  string
		der   []byte
		ekPub crypto.PublicKey
		now   time.Time
		want  attest.Reason
	}{
		{"issued by an unknown root", fromUnknownRoot, ekPub, now, attest.ReasonEKUntrusted},
		{"valid certificate presented with another EK", good, &otherEK.PublicKey, now, attest.ReasonEKMismatch},
		{"extra unknown critical extension", issue(&tpmsim.EKCertificateOptions{ExtraExtensions: []pkix.Extension{unknownCritical}}), ekPub, now, attest.ReasonEKUntrusted},
		{"expired", issue(&tpmsim.EKCertificateOptions{NotBefore: now.AddDate(-2, 0, 0), NotAfter: now.AddDate(-1, 0, 0)}), ekPub, now, attest.ReasonEKUntrusted},
		{"not yet valid", issue(&tpmsim.EKCertificateOptions{NotBefore: now.Add(time.Hour), NotAfter: now.AddDate(1, 0, 0)}), ekPub, now, attest.ReasonEKUntrusted},
		{"verified after expiry", good, ekPub, now.AddDate(21, 0, 0), attest.ReasonEKUntrusted},
		{"EKU without tcg-kp-EKCertificate", issue(&tpmsim.EKCertificateOptions{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Value: serverAuthEKU}}}), ekPub, now, attest.ReasonEKUntrusted},
		// crypto/x509 itself refuses duplicate extensions and a SAN that
		// is not DER.
		{"two subjectAltNames", issue(&tpmsim.EKCertificateOptions{ExtraExtensions: []pkix.Extension{tcgSAN(t)}}), ekPub, now, attest.ReasonMalformed},
		{"no subjectAltName", issueRaw(t, f.mfr, ekPub, &x509.Certificate{Subject: pkix.Name{CommonName: "ek"}, UnknownExtKeyUsage: []asn1.ObjectIdentifier{tpmsim.OIDEKCertificate}}), ekPub, now, attest.ReasonEKUntrusted},
		{"subjectAltName with a DNS name", customSAN(dnsSAN), ekPub, now, attest.ReasonEKUntrusted},
		{"subjectAltName lacking model and version", customSAN(oneAttrSAN), ekPub, now, attest.ReasonEKUntrusted},
		{"subjectAltName not DER", customSAN([]byte{0x30, 0x03, 0x01}), ekPub, now, attest.ReasonMalformed},
		{"subjectAltName with a non-string attribute", customSAN(intAttrSAN), ekPub, now, attest.ReasonEKUntrusted},
		{"subjectAltName with an unknown attribute", customSAN(extraAttrSAN), ekPub, now, attest.ReasonEKUntrusted},
		{"CA certificate", issueRaw(t, f.mfr, ekPub, &x509.Certificate{ExtraExtensions: []pkix.Extension{tcgSAN(t)}, IsCA: true, BasicConstraintsValid: true}), ekPub, now, attest.ReasonEKUntrusted},
		{"weak EK", weakCert, &weakEK.PublicKey, now, attest.ReasonEKWeak},
		{"garbage", []byte("not a certificate"), ekPub, now, attest.ReasonMalformed},
		{"trailing byte", append(bytes.Clone(good), 0), ekPub, now, attest.ReasonMalformed},
		{"TCG NV header", append([]byte{0x10, 0x01, 0x00, byte(len(good) >> 8), byte(len(good))}, good...), ekPub, now, attest.ReasonMalformed},
		{"empty", nil, ekPub, now, attest.ReasonMalformed},
		{"oversized", make([]byte, attest.MaxEKCertificateSize+1), ekPub, now, attest.ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			info, err := attest.VerifyEKCertificate(tc.der, tc.ekPub, f.roots, nil, tc.now)
			if info != nil {
				t.Error("VerifyEKCertificate returned info with an error")
			}
			wantReason(t, err, tc.want)
		})
	}

	t.Run("no roots", func(t *testing.T) {
		_, err := attest.VerifyEKCertificate(good, ekPub, nil, nil, now)
		if err == nil || attest.ReasonOf(err) != 0 {
			t.Errorf("nil roots: %v, want a caller error", err)
		}
	})
	t.Run("no time", func(t *testing.T) {
		_, err := attest.VerifyEKCertificate(good, ekPub, f.roots, nil, time.Time{})
		if err == nil || attest.ReasonOf(err) != 0 {
			t.Errorf("zero now: %v, want a caller error", err)
		}
	})
}
