package attest_test

import (
	"crypto/rand"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/attest"
)

// BenchmarkVerifyEnrollment measures the server's attestation cryptography
// for one enrollment. The device side (TPM operations) runs once, outside
// the timed loop, via fixture.enroll; each iteration then does what the
// server does with that evidence:
//
//	begin:  NewActivationChallenge (VerifyAKParameters + MakeCredential)
//	finish: VerifyActivationProof, ParseAKPublic (from the stored public
//	        area), VerifyQuote, VerifyKeyCertification, VerifyCSR
//
// Sub-benchmarks time each step alone; VerifyEKCertificate is reported
// separately because devices with a pre-registered EK skip it.
//
//	go test -run '^$' -bench BenchmarkVerifyEnrollment -count 5 ./attest
func BenchmarkVerifyEnrollment(b *testing.B) {
	f := needTPM(b)
	for _, c := range []struct {
		name string
		alg  goattest.Algorithm
	}{
		{"ECDSA-AK", goattest.ECDSA},
		{"RSA-AK", goattest.RSA},
	} {
		ev, err := f.enroll(c.alg)
		if err != nil {
			b.Fatal(err)
		}
		ak, err := attest.VerifyAKParameters(ev.ak)
		if err != nil {
			b.Fatal(err)
		}
		keyPub, err := attest.VerifyKeyCertification(ak, ev.key)
		if err != nil {
			b.Fatal(err)
		}
		check := func(b *testing.B, err error) {
			if err != nil {
				b.Fatal(err)
			}
		}

		b.Run(c.name+"/total", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _, err := attest.NewActivationChallenge(rand.Reader, f.ek.Public, ev.ak)
				check(b, err)
				check(b, attest.VerifyActivationProof(ev.secret, ev.activated))
				stored, err := attest.ParseAKPublic(ak.TPMPublic)
				check(b, err)
				_, err = attest.VerifyQuote(stored, ev.quote.Quote, ev.quote.Signature, ev.pcrs, ev.nonce, quotedPCRs)
				check(b, err)
				key, err := attest.VerifyKeyCertification(stored, ev.key)
				check(b, err)
				_, err = attest.VerifyCSR(ev.csr, key)
				check(b, err)
			}
		})
		b.Run(c.name+"/challenge", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _, err := attest.NewActivationChallenge(rand.Reader, f.ek.Public, ev.ak)
				check(b, err)
			}
		})
		b.Run(c.name+"/quote", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, err := attest.VerifyQuote(ak, ev.quote.Quote, ev.quote.Signature, ev.pcrs, ev.nonce, quotedPCRs)
				check(b, err)
			}
		})
		b.Run(c.name+"/certify", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, err := attest.VerifyKeyCertification(ak, ev.key)
				check(b, err)
			}
		})
		b.Run(c.name+"/csr", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, err := attest.VerifyCSR(ev.csr, keyPub)
				check(b, err)
			}
		})
	}

	b.Run("ek-certificate", func(b *testing.B) {
		now := time.Now()
		b.ReportAllocs()
		for b.Loop() {
			_, err := attest.VerifyEKCertificate(f.ek.Certificate.Raw, f.ek.Public, f.roots, nil, now)
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
