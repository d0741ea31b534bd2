package tpmsim_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"testing"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// openSim opens the process's one simulator, skipping without cgo.
func openSim(tb testing.TB, seed int64) *tpmsim.TPM {
	tb.Helper()
	sim, err := tpmsim.Open(seed)
	if errors.Is(err, tpmsim.ErrCgoRequired) {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatalf("Open(%d): %v", seed, err)
	}
	return sim
}

// TestManufactureECCEK: an ECC EK with its certificate in NV is what
// go-attestation's EKCertificates returns, and activation with it proves
// the AK and EK share the TPM.
func TestManufactureECCEK(t *testing.T) {
	sim := openSim(t, testSeed)
	defer sim.Close()
	m, err := tpmsim.NewManufacturer("test manufacturer")
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("device 1 EK nonce")
	pub, der, err := tpmsim.ManufactureECCEK(sim, m, nonce)
	if err != nil {
		t.Fatalf("ManufactureECCEK: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if !equalKeys(cert.PublicKey, pub) || cert.KeyUsage != x509.KeyUsageKeyAgreement {
		t.Fatalf("EK certificate: key %v usage %v, want the EK with keyAgreement", cert.PublicKey, cert.KeyUsage)
	}

	at, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: sim})
	if err != nil {
		t.Fatal(err)
	}
	eks, err := at.EKCertificates()
	if err != nil {
		t.Fatalf("EKCertificates: %v", err)
	}
	if len(eks) != 1 || eks[0].Certificate == nil || !bytes.Equal(eks[0].Certificate.Raw, der) || !equalKeys(eks[0].Public, pub) {
		t.Fatalf("EKCertificates() = %+v, want the ECC EK with its certificate", eks)
	}

	// The nonce is recorded where the profile puts it.
	rsp, err := (tpm2.NVReadPublic{NVIndex: tpmsim.ECCEKNonceIndex}).Execute(sim)
	if err != nil {
		t.Fatalf("EK nonce index: %v", err)
	}
	if nv, _ := rsp.NVPublic.Contents(); nv == nil || int(nv.DataSize) != len(nonce) {
		t.Errorf("EK nonce index size = %+v, want %d", nv, len(nonce))
	}

	// Credential activation with the ECC EK.
	ak, err := at.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close(at)
	params := goattest.ActivationParameters{EK: pub, AK: ak.AttestationParameters()}
	secret, ec, err := params.Generate()
	if err != nil {
		t.Fatalf("MakeCredential to the ECC EK: %v", err)
	}
	got, err := ak.ActivateCredentialWithEK(at, *ec, eks[0])
	if err != nil {
		t.Fatalf("ActivateCredentialWithEK: %v", err)
	}
	if !bytes.Equal(got, secret) {
		t.Error("activation recovered a different secret")
	}
}

// TestCreateECCEKNonce: the nonce selects the EK, reproducibly, and the
// persisted EK is replaced.
func TestCreateECCEKNonce(t *testing.T) {
	sim := openSim(t, testSeed)
	defer sim.Close()
	create := func(nonce []byte) *ecdsa.PublicKey {
		t.Helper()
		pub, err := tpmsim.CreateECCEK(sim, nonce)
		if err != nil {
			t.Fatalf("CreateECCEK(%q): %v", nonce, err)
		}
		rsp, err := (tpm2.ReadPublic{ObjectHandle: tpmsim.ECCEKHandle}).Execute(sim)
		if err != nil {
			t.Fatalf("no EK persisted: %v", err)
		}
		p, _ := rsp.OutPublic.Contents()
		pt, _ := p.Unique.ECC()
		if !bytes.Equal(pt.X.Buffer, pub.X.FillBytes(make([]byte, 32))) {
			t.Fatal("the persisted EK is not the one created")
		}
		return pub
	}
	a, b, def := create([]byte("a")), create([]byte("b")), create(nil)
	if equalKeys(a, b) || equalKeys(a, def) {
		t.Error("different nonces gave the same EK")
	}
	if again := create([]byte("a")); !equalKeys(a, again) {
		t.Error("the same nonce gave a different EK")
	}
	// The empty nonce is the TCG default template: the same key a
	// zero-filled 32-byte nonce gives.
	if zero := create(make([]byte, 32)); !equalKeys(def, zero) {
		t.Error("empty nonce differs from the default template")
	}
	if _, err := tpmsim.CreateECCEK(sim, make([]byte, 33)); err == nil {
		t.Error("a 33-byte nonce was accepted")
	}
}

// Costs on the reference simulator that decide how enroll-bench makes
// device identities (see README, "Benchmarks: enroll-bench"):
//
//	go test -run '^$' -bench . -benchtime 50x ./tpmsim

// BenchmarkOpenFixedSeed is one re-manufacture: what a per-device seed
// costs before any key exists.
func BenchmarkOpenFixedSeed(b *testing.B) {
	for i := 0; b.Loop(); i++ {
		openSim(b, int64(i+1)).Close()
	}
}

// BenchmarkSRK creates a storage root key from a fresh seed each time (a
// primary key of a seed the simulator has not seen is derived anew).
func BenchmarkSRK(b *testing.B) {
	for _, c := range []struct {
		name string
		tmpl tpm2.TPMTPublic
	}{{"RSA-2048", tpm2.RSASRKTemplate}, {"ECC-P256", tpm2.ECCSRKTemplate}} {
		b.Run(c.name, func(b *testing.B) {
			sim := openSim(b, 0)
			defer sim.Close()
			for i := 0; b.Loop(); i++ {
				tmpl := c.tmpl
				// A distinct unique field per iteration defeats any
				// cache of derived keys.
				var u [8]byte
				binary.BigEndian.PutUint64(u[:], uint64(i))
				if ecc, err := tmpl.Unique.ECC(); err == nil {
					x := append([]byte(nil), ecc.X.Buffer...)
					copy(x, u[:])
					tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: x}, Y: ecc.Y})
				} else if rsa, err := tmpl.Unique.RSA(); err == nil {
					n := append([]byte(nil), rsa.Buffer...)
					copy(n, u[:])
					tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: n})
				}
				rsp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}).Execute(sim)
				if err != nil {
					b.Fatal(err)
				}
				(tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(sim)
			}
		})
	}
}

// BenchmarkCreateECCEK derives and persists a new ECC EK per iteration: the
// per-device cost of the EK-nonce scheme.
func BenchmarkCreateECCEK(b *testing.B) {
	sim := openSim(b, 0)
	defer sim.Close()
	var nonce [8]byte
	for i := 0; b.Loop(); i++ {
		binary.BigEndian.PutUint64(nonce[:], uint64(i))
		if _, err := tpmsim.CreateECCEK(sim, nonce[:]); err != nil {
			b.Fatal(err)
		}
	}
}
