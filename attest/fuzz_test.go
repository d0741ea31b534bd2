package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/attest"
)

// The fuzz targets feed attacker-controlled bytes to every decoder. The
// invariant is: no panic, every error is a typed verdict
// (*attest.VerificationError), and what is accepted is self-consistent.
// Seeds are real evidence from the simulated TPM when it is available, plus
// edge cases.

// edgeSeeds are inputs every decoder should refuse without trouble.
var edgeSeeds = [][]byte{
	nil,
	{0},
	{0xff, 0x54, 0x43, 0x47},             // TPM_GENERATED alone
	{0xff, 0x54, 0x43, 0x47, 0x80, 0x18}, // ... + TPM_ST_ATTEST_QUOTE
	{0x00, 0x23, 0x00, 0x0b},             // TPM_ALG_ECC, SHA-256
	{0x00, 0x01, 0x00, 0x0b, 0xff, 0xff, 0xff}, // TPM_ALG_RSA, bad attributes
	{0x30, 0x82, 0xff, 0xff},                   // DER SEQUENCE claiming 64 KiB
}

func requireVerdict(t *testing.T, err error) {
	t.Helper()
	if err != nil && attest.ReasonOf(err) == 0 {
		t.Fatalf("untyped error: %v", err)
	}
}

func FuzzVerifyQuote(f *testing.F) {
	ak := &attest.AKPublic{Hash: crypto.SHA256}
	pcrs := map[int][]byte{}
	nonce := make([]byte, 32)
	if fx != nil {
		g := fx.golden
		parsed, err := attest.VerifyAKParameters(g.ak)
		if err != nil {
			f.Fatal(err)
		}
		ak, pcrs, nonce = parsed, g.pcrs, g.nonce
		f.Add(g.quote.Quote, g.quote.Signature, g.nonce)
		f.Add(g.key.CreateAttestation, g.key.CreateSignature, g.nonce)
		f.Add(g.ak.CreateAttestation, g.ak.CreateSignature, g.nonce)
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		ak.Public = &k.PublicKey
	}
	for _, s := range edgeSeeds {
		f.Add(s, s, nonce)
	}
	f.Fuzz(func(t *testing.T, quote, sig, n []byte) {
		got, err := attest.VerifyQuote(ak, quote, sig, pcrs, n, quotedPCRs)
		requireVerdict(t, err)
		if err == nil && len(got) != len(pcrs) {
			t.Fatalf("accepted quote proves %d PCRs, %d reported", len(got), len(pcrs))
		}
	})
}

func FuzzParseEKPublic(f *testing.F) {
	if fx != nil {
		f.Add(fx.ekDER)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	f.Add(der)
	for _, s := range edgeSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		pub, err := attest.ParseEKPublic(in)
		requireVerdict(t, err)
		if err != nil {
			return
		}
		id, err := attest.DeviceID(pub)
		if err != nil || len(id) != 64 {
			t.Fatalf("accepted key has no device ID: %q, %v", id, err)
		}
		again, err := attest.ParseEKPublic(mustPKIX(t, pub))
		if err != nil {
			t.Fatalf("accepted key does not parse again after encoding: %v", err)
		}
		if id2, _ := attest.DeviceID(again); id2 != id {
			t.Fatal("device ID changed after re-encoding")
		}
	})
}

func FuzzParseAKPublic(f *testing.F) {
	if fx != nil {
		f.Add(fx.golden.ak.Public)
		f.Add(fx.golden.key.Public)
	}
	for _, s := range edgeSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ak, err := attest.ParseAKPublic(in)
		requireVerdict(t, err)
		if err != nil {
			return
		}
		if string(ak.TPMPublic) != string(in) || ak.Public == nil || !ak.Hash.Available() {
			t.Fatalf("accepted AK is inconsistent: %v", ak)
		}
	})
}

func FuzzVerifyAKParameters(f *testing.F) {
	if fx != nil {
		p := fx.golden.ak
		f.Add(p.Public, p.CreateData, p.CreateAttestation, p.CreateSignature)
	}
	for _, s := range edgeSeeds {
		f.Add(s, s, s, s)
	}
	f.Fuzz(func(t *testing.T, pub, data, att, sig []byte) {
		_, err := attest.VerifyAKParameters(goattest.AttestationParameters{
			Public: pub, CreateData: data, CreateAttestation: att, CreateSignature: sig,
		})
		requireVerdict(t, err)
	})
}

func FuzzVerifyKeyCertification(f *testing.F) {
	ak := &attest.AKPublic{Hash: crypto.SHA256}
	if fx != nil {
		parsed, err := attest.VerifyAKParameters(fx.golden.ak)
		if err != nil {
			f.Fatal(err)
		}
		ak = parsed
		p := fx.golden.key
		f.Add(p.Public, p.CreateAttestation, p.CreateSignature)
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		ak.Public = &k.PublicKey
	}
	for _, s := range edgeSeeds {
		f.Add(s, s, s)
	}
	f.Fuzz(func(t *testing.T, pub, att, sig []byte) {
		_, err := attest.VerifyKeyCertification(ak, goattest.CertificationParameters{
			Public: pub, CreateAttestation: att, CreateSignature: sig,
		})
		requireVerdict(t, err)
	})
}

func FuzzVerifyEKCertificate(f *testing.F) {
	roots := x509.NewCertPool()
	var ekPub crypto.PublicKey
	if fx != nil {
		roots, ekPub = fx.roots, fx.ek.Public
		f.Add(fx.ek.Certificate.Raw)
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		ekPub = &k.PublicKey
	}
	for _, s := range edgeSeeds {
		f.Add(s)
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, der []byte) {
		_, err := attest.VerifyEKCertificate(der, ekPub, roots, nil, now)
		requireVerdict(t, err)
	})
}
