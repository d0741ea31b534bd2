package attest_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/attest"
)

// verifyEnrollment runs every server-side check on ev, in protocol order,
// and returns the first error.
func verifyEnrollment(t *testing.T, f *fixture, ev *evidence) {
	t.Helper()
	now := time.Now()

	// begin
	ekPub, err := attest.ParseEKPublic(f.ekDER)
	if err != nil {
		t.Fatalf("ParseEKPublic: %v", err)
	}
	info, err := attest.VerifyEKCertificate(f.ek.Certificate.Raw, ekPub, f.roots, nil, now)
	if err != nil {
		t.Fatalf("VerifyEKCertificate: %v", err)
	}
	if info.Manufacturer == "" || info.Model == "" || info.Version == "" {
		t.Errorf("EK certificate info = %+v, want TPM attributes", info)
	}
	ak, err := attest.VerifyAKParameters(ev.ak)
	if err != nil {
		t.Fatalf("VerifyAKParameters: %v", err)
	}

	// finish
	if err := attest.VerifyActivationProof(ev.secret, ev.activated); err != nil {
		t.Fatalf("VerifyActivationProof: %v", err)
	}
	stored, err := attest.ParseAKPublic(ak.TPMPublic)
	if err != nil {
		t.Fatalf("ParseAKPublic: %v", err)
	}
	got, err := attest.VerifyQuote(stored, ev.quote.Quote, ev.quote.Signature, ev.pcrs, ev.nonce, quotedPCRs)
	if err != nil {
		t.Fatalf("VerifyQuote: %v", err)
	}
	if len(got) != len(quotedPCRs) {
		t.Errorf("VerifyQuote returned %d PCRs, want %d", len(got), len(quotedPCRs))
	}
	for _, i := range quotedPCRs {
		if !bytes.Equal(got[i], ev.pcrs[i]) {
			t.Errorf("PCR %d = %x, want %x", i, got[i], ev.pcrs[i])
		}
		if bytes.Equal(got[i], make([]byte, 32)) {
			t.Errorf("PCR %d is all zero: the fixture did not measure anything", i)
		}
	}
	keyPub, err := attest.VerifyKeyCertification(stored, ev.key)
	if err != nil {
		t.Fatalf("VerifyKeyCertification: %v", err)
	}
	if !keyPub.(interface{ Equal(crypto.PublicKey) bool }).Equal(ev.keyPub) {
		t.Error("VerifyKeyCertification returned a different key than the TPM created")
	}
	csr, err := attest.VerifyCSR(ev.csr, keyPub)
	if err != nil {
		t.Fatalf("VerifyCSR: %v", err)
	}
	if csr.Subject.CommonName != "device" {
		t.Errorf("CSR subject = %q", csr.Subject)
	}
}

func TestEnrollmentECDSAAK(t *testing.T) {
	f := needTPM(t)
	ev, err := f.enroll(goattest.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	verifyEnrollment(t, f, ev)
}

func TestEnrollmentRSAAK(t *testing.T) {
	f := needTPM(t)
	ev, err := f.enroll(goattest.RSA)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := attest.VerifyAKParameters(ev.ak)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ak.Public.(*rsa.PublicKey); !ok || ak.Hash != crypto.SHA256 {
		t.Errorf("AK = %v, want RSA with SHA-256", ak)
	}
	verifyEnrollment(t, f, ev)
}

func TestVerifyAKParametersRejects(t *testing.T) {
	f := needTPM(t)
	good := f.golden.ak

	// Evidence from other TPM objects to splice in.
	var otherAK goattest.AttestationParameters
	f.withAK(t, goattest.ECDSA, func(ak *goattest.AK) { otherAK = ak.AttestationParameters() })
	keyParams := f.golden.key

	tests := []struct {
		name   string
		params func() goattest.AttestationParameters
		want   attest.Reason
	}{
		{"creation attestation tampered (signed clock field)", func() goattest.AttestationParameters {
			p := good
			// magic 4, type 2, qualifiedSigner 2+34, extraData 2: byte
			// 48 is inside clockInfo, which only the signature covers.
			p.CreateAttestation = flip(p.CreateAttestation, 48)
			return p
		}, attest.ReasonAKInvalid},
		{"creation attestation tampered (creation hash)", func() goattest.AttestationParameters {
			p := good
			p.CreateAttestation = flip(p.CreateAttestation, -1)
			return p
		}, attest.ReasonAKInvalid},
		{"creation data tampered", func() goattest.AttestationParameters {
			p := good
			// The last bytes are outsideInfo's empty size; -3 is the
			// end of parentQualifiedName.
			p.CreateData = flip(p.CreateData, -3)
			return p
		}, attest.ReasonAKInvalid},
		{"creation signature tampered", func() goattest.AttestationParameters {
			p := good
			p.CreateSignature = flip(p.CreateSignature, -1)
			return p
		}, attest.ReasonAKInvalid},
		{"non-restricted key's certification as AK parameters", func() goattest.AttestationParameters {
			return goattest.AttestationParameters{
				Public:            keyParams.Public,
				CreateData:        good.CreateData,
				CreateAttestation: keyParams.CreateAttestation,
				CreateSignature:   keyParams.CreateSignature,
			}
		}, attest.ReasonAKInvalid},
		{"non-restricted key's public with the AK's attestation", func() goattest.AttestationParameters {
			p := good
			p.Public = keyParams.Public
			return p
		}, attest.ReasonAKInvalid},
		{"another AK's public with this AK's attestation", func() goattest.AttestationParameters {
			p := good
			p.Public = otherAK.Public
			return p
		}, attest.ReasonAKInvalid},
		{"another AK's creation attestation", func() goattest.AttestationParameters {
			p := good
			p.CreateAttestation, p.CreateSignature = otherAK.CreateAttestation, otherAK.CreateSignature
			return p
		}, attest.ReasonAKInvalid},
		{"TPM 1.2 activation format", func() goattest.AttestationParameters {
			p := good
			p.UseTCSDActivationFormat = true
			return p
		}, attest.ReasonAKInvalid},
		{"public area truncated", func() goattest.AttestationParameters {
			p := good
			p.Public = p.Public[:len(p.Public)-1]
			return p
		}, attest.ReasonMalformed},
		{"public area with trailing byte", func() goattest.AttestationParameters {
			p := good
			p.Public = append(bytes.Clone(p.Public), 0)
			return p
		}, attest.ReasonMalformed},
		{"creation attestation with trailing byte", func() goattest.AttestationParameters {
			p := good
			p.CreateAttestation = append(bytes.Clone(p.CreateAttestation), 0)
			return p
		}, attest.ReasonMalformed},
		{"empty creation data", func() goattest.AttestationParameters {
			p := good
			p.CreateData = nil
			return p
		}, attest.ReasonMalformed},
		{"oversized public area", func() goattest.AttestationParameters {
			p := good
			p.Public = make([]byte, attest.MaxTPMPublicSize+1)
			return p
		}, attest.ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := attest.VerifyAKParameters(tc.params())
			wantReason(t, err, tc.want)
			// NewActivationChallenge refuses the same parameters.
			_, _, err = attest.NewActivationChallenge(rand.Reader, f.ek.Public, tc.params())
			wantReason(t, err, tc.want)
		})
	}
}

func TestParseAKPublicRejects(t *testing.T) {
	f := needTPM(t)
	if _, err := attest.ParseAKPublic(f.golden.ak.Public); err != nil {
		t.Fatalf("ParseAKPublic(golden AK): %v", err)
	}
	_, err := attest.ParseAKPublic(f.golden.key.Public)
	wantReason(t, err, attest.ReasonAKInvalid)
	_, err = attest.ParseAKPublic(nil)
	wantReason(t, err, attest.ReasonMalformed)
	_, err = attest.ParseAKPublic([]byte{0x00, 0x23})
	wantReason(t, err, attest.ReasonMalformed)
}

func TestActivationRejects(t *testing.T) {
	f := needTPM(t)

	t.Run("AK from another TPM", func(t *testing.T) {
		// The server believes the AK belongs to a device whose EK is
		// some other key; the real TPM cannot recover that secret.
		stranger, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		f.withAK(t, goattest.ECDSA, func(ak *goattest.AK) {
			secret, ec, err := attest.NewActivationChallenge(rand.Reader, &stranger.PublicKey, ak.AttestationParameters())
			if err != nil {
				t.Fatal(err)
			}
			got, err := ak.ActivateCredential(f.tpm, *ec)
			t.Logf("ActivateCredential against a foreign EK: %x, %v", got, err)
			wantReason(t, attest.VerifyActivationProof(secret, got), attest.ReasonActivationFailed)
		})
	})

	t.Run("challenge activated with another AK of the same TPM", func(t *testing.T) {
		f.withAK(t, goattest.ECDSA, func(ak1 *goattest.AK) {
			f.withAK(t, goattest.ECDSA, func(ak2 *goattest.AK) {
				secret, ec, err := attest.NewActivationChallenge(rand.Reader, f.ek.Public, ak1.AttestationParameters())
				if err != nil {
					t.Fatal(err)
				}
				got, err := ak2.ActivateCredential(f.tpm, *ec)
				t.Logf("ActivateCredential with the wrong AK: %x, %v", got, err)
				wantReason(t, attest.VerifyActivationProof(secret, got), attest.ReasonActivationFailed)
			})
		})
	})

	ev := f.golden
	tests := []struct {
		name      string
		want, got []byte
	}{
		{"wrong secret", ev.secret, randomBytes(len(ev.secret))},
		{"one bit off", ev.secret, flip(ev.activated, 0)},
		{"truncated", ev.secret, ev.activated[:len(ev.activated)-1]},
		{"empty proof", ev.secret, nil},
		{"no expectation", nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantReason(t, attest.VerifyActivationProof(tc.want, tc.got), attest.ReasonActivationFailed)
		})
	}

	t.Run("weak EK", func(t *testing.T) {
		weak, err := rsa.GenerateKey(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = attest.NewActivationChallenge(rand.Reader, &weak.PublicKey, ev.ak)
		wantReason(t, err, attest.ReasonEKWeak)
	})

	t.Run("MakeCredential for an AK whose creation was not verified", func(t *testing.T) {
		// ParseAKPublic checks only the public area's claims: the
		// creation attestation, and the name in it, were never checked.
		parsed, err := attest.ParseAKPublic(ev.ak.Public)
		if err != nil {
			t.Fatal(err)
		}
		for _, ak := range []*attest.AKPublic{parsed, nil} {
			_, _, err = attest.MakeCredential(rand.Reader, f.ek.Public, ak)
			wantReason(t, err, attest.ReasonAKInvalid)
		}
	})

	t.Run("MakeCredential for a verified AK activates", func(t *testing.T) {
		f.withAK(t, goattest.ECDSA, func(ak *goattest.AK) {
			verified, err := attest.VerifyAKParameters(ak.AttestationParameters())
			if err != nil {
				t.Fatal(err)
			}
			secret, ec, err := attest.MakeCredential(rand.Reader, f.ek.Public, verified)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ak.ActivateCredential(f.tpm, *ec)
			if err != nil {
				t.Fatal(err)
			}
			if err := attest.VerifyActivationProof(secret, got); err != nil {
				t.Error(err)
			}
		})
	})
}

func TestVerifyQuoteRejects(t *testing.T) {
	f := needTPM(t)
	ev := f.golden
	ak, err := attest.VerifyAKParameters(ev.ak)
	if err != nil {
		t.Fatal(err)
	}

	// A quote by a second AK over the same nonce and PCRs.
	var otherAKQuote goattest.Quote
	f.withAK(t, goattest.ECDSA, func(ak2 *goattest.AK) {
		q, err := ak2.QuotePCRs(f.tpm, ev.nonce, goattest.HashSHA256, quotedPCRs)
		if err != nil {
			t.Fatal(err)
		}
		otherAKQuote = *q
	})

	// Quotes by the right AK that a device could send instead: PCR 7
	// left out of the selection, the SHA-1 bank, and a certification
	// (another AK-signed TPMS_ATTEST) passed off as a quote.
	var partial, sha1Quote goattest.Quote
	var certifyAsQuote goattest.CertificationParameters
	akPriv, ak1Close := loadGoldenLikeAK(t, f)
	defer ak1Close()
	q, err := akPriv.QuotePCRs(f.tpm, ev.nonce, goattest.HashSHA256, quotedPCRs[:7])
	if err != nil {
		t.Fatal(err)
	}
	partial = *q
	q, err = akPriv.QuotePCRs(f.tpm, ev.nonce, goattest.HashSHA1, quotedPCRs)
	if err != nil {
		t.Fatal(err)
	}
	sha1Quote = *q
	certifyAsQuote, _ = f.certifiedKey(t, akPriv)
	liveAK, err := attest.VerifyAKParameters(akPriv.AttestationParameters())
	if err != nil {
		t.Fatal(err)
	}
	liveQuote, err := akPriv.QuotePCRs(f.tpm, ev.nonce, goattest.HashSHA256, quotedPCRs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.VerifyQuote(liveAK, liveQuote.Quote, liveQuote.Signature, ev.pcrs, ev.nonce, quotedPCRs); err != nil {
		t.Fatalf("control: VerifyQuote with the live AK: %v", err)
	}
	var rsaAK *attest.AKPublic
	f.withAK(t, goattest.RSA, func(ak *goattest.AK) {
		if rsaAK, err = attest.VerifyAKParameters(ak.AttestationParameters()); err != nil {
			t.Fatal(err)
		}
	})
	sha1PCRs := map[int][]byte{}
	for i := range ev.pcrs {
		sha1PCRs[i] = make([]byte, 20)
	}

	type args struct {
		ak       *attest.AKPublic
		quote    []byte
		sig      []byte
		pcrs     map[int][]byte
		nonce    []byte
		required []int
	}
	base := func() args {
		return args{ak, ev.quote.Quote, ev.quote.Signature, clonePCRs(ev.pcrs), ev.nonce, quotedPCRs}
	}
	tests := []struct {
		name string
		mod  func(a *args)
		want attest.Reason
	}{
		{"quote over another nonce", func(a *args) { a.nonce = randomBytes(32) }, attest.ReasonQuoteNonce},
		{"nonce too short", func(a *args) { a.nonce = a.nonce[:attest.MinNonceSize-1] }, attest.ReasonQuoteNonce},
		{"nonce too long", func(a *args) { a.nonce = randomBytes(attest.MaxNonceSize + 1) }, attest.ReasonQuoteNonce},
		{"no nonce", func(a *args) { a.nonce = nil }, attest.ReasonQuoteNonce},
		{"quote signed by a different AK", func(a *args) {
			a.quote, a.sig = otherAKQuote.Quote, otherAKQuote.Signature
		}, attest.ReasonQuoteSignature},
		{"verified with a different AK", func(a *args) { a.ak = liveAK }, attest.ReasonQuoteSignature},
		{"ECDSA quote verified with an RSA AK", func(a *args) { a.ak = rsaAK }, attest.ReasonQuoteSignature},
		{"quote body tampered", func(a *args) { a.quote = flip(a.quote, 50) }, attest.ReasonQuoteSignature},
		{"signature tampered", func(a *args) { a.sig = flip(a.sig, -1) }, attest.ReasonQuoteSignature},
		{"PCR value altered", func(a *args) { a.pcrs[3] = flip(a.pcrs[3], 0) }, attest.ReasonPCRMismatch},
		{"PCR values swapped", func(a *args) { a.pcrs[1], a.pcrs[2] = a.pcrs[2], a.pcrs[1] }, attest.ReasonPCRMismatch},
		{"quoted PCR not reported", func(a *args) { delete(a.pcrs, 5) }, attest.ReasonPCRMismatch},
		{"reported PCR not quoted", func(a *args) { a.pcrs[8] = make([]byte, 32) }, attest.ReasonPCRMismatch},
		{"required PCR not in selection", func(a *args) {
			a.quote, a.sig = partial.Quote, partial.Signature
			delete(a.pcrs, 7)
			a.ak = liveAK
		}, attest.ReasonPCRMismatch},
		{"required PCR beyond the quoted ones", func(a *args) { a.required = []int{0, 7, 8} }, attest.ReasonPCRMismatch},
		{"SHA-1 bank", func(a *args) {
			a.quote, a.sig, a.ak = sha1Quote.Quote, sha1Quote.Signature, liveAK
		}, attest.ReasonPCRMismatch},
		{"certification passed off as a quote", func(a *args) {
			a.quote, a.sig, a.ak = certifyAsQuote.CreateAttestation, certifyAsQuote.CreateSignature, liveAK
		}, attest.ReasonMalformed},
		{"quote with trailing byte", func(a *args) { a.quote = append(bytes.Clone(a.quote), 0) }, attest.ReasonMalformed},
		{"quote truncated", func(a *args) { a.quote = a.quote[:len(a.quote)-1] }, attest.ReasonMalformed},
		{"signature with trailing byte", func(a *args) { a.sig = append(bytes.Clone(a.sig), 0) }, attest.ReasonMalformed},
		{"PCR value of SHA-1 size", func(a *args) { a.pcrs = sha1PCRs }, attest.ReasonMalformed},
		{"PCR index out of range", func(a *args) { a.pcrs[24] = make([]byte, 32) }, attest.ReasonMalformed},
		{"oversized quote", func(a *args) { a.quote = make([]byte, attest.MaxQuoteSize+1) }, attest.ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := base()
			tc.mod(&a)
			got, err := attest.VerifyQuote(a.ak, a.quote, a.sig, a.pcrs, a.nonce, a.required)
			if got != nil {
				t.Errorf("VerifyQuote returned PCRs with an error")
			}
			wantReason(t, err, tc.want)
		})
	}
}

// loadGoldenLikeAK creates a fresh ECDSA AK for tests that need live quotes
// by a known AK; the returned func closes it.
func loadGoldenLikeAK(t *testing.T, f *fixture) (*goattest.AK, func()) {
	t.Helper()
	ak, err := f.tpm.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
	if err != nil {
		t.Fatal(err)
	}
	return ak, func() {
		if err := ak.Close(f.tpm); err != nil {
			t.Errorf("closing AK: %v", err)
		}
	}
}

func TestVerifyKeyCertificationRejects(t *testing.T) {
	f := needTPM(t)
	ev := f.golden
	ak, err := attest.VerifyAKParameters(ev.ak)
	if err != nil {
		t.Fatal(err)
	}

	// A key certified by a second AK, and that AK's parameters.
	var byOtherAK goattest.CertificationParameters
	var otherAK goattest.AttestationParameters
	f.withAK(t, goattest.ECDSA, func(ak2 *goattest.AK) {
		otherAK = ak2.AttestationParameters()
		byOtherAK, _ = f.certifiedKey(t, ak2)
	})
	otherAKPub, err := attest.VerifyAKParameters(otherAK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.VerifyKeyCertification(otherAKPub, byOtherAK); err != nil {
		t.Fatalf("control: key certified by the other AK does not verify with it: %v", err)
	}

	tests := []struct {
		name   string
		ak     *attest.AKPublic
		params func() goattest.CertificationParameters
		want   attest.Reason
	}{
		{"key certified by another AK", ak, func() goattest.CertificationParameters { return byOtherAK }, attest.ReasonKeyNotCertified},
		{"attestation tampered", ak, func() goattest.CertificationParameters {
			p := ev.key
			p.CreateAttestation = flip(p.CreateAttestation, 48)
			return p
		}, attest.ReasonKeyNotCertified},
		{"certified name tampered", ak, func() goattest.CertificationParameters {
			p := ev.key
			p.CreateAttestation = flip(p.CreateAttestation, -40)
			return p
		}, attest.ReasonKeyNotCertified},
		{"signature tampered", ak, func() goattest.CertificationParameters {
			p := ev.key
			p.CreateSignature = flip(p.CreateSignature, -1)
			return p
		}, attest.ReasonKeyNotCertified},
		{"public area swapped for another key's", ak, func() goattest.CertificationParameters {
			p := ev.key
			p.Public = byOtherAK.Public
			return p
		}, attest.ReasonKeyNotCertified},
		{"AK creation attestation as key certification", ak, func() goattest.CertificationParameters {
			return goattest.CertificationParameters{
				Public:            ev.ak.Public,
				CreateAttestation: ev.ak.CreateAttestation,
				CreateSignature:   ev.ak.CreateSignature,
			}
		}, attest.ReasonKeyNotCertified},
		{"public area with trailing byte", ak, func() goattest.CertificationParameters {
			p := ev.key
			p.Public = append(bytes.Clone(p.Public), 0)
			return p
		}, attest.ReasonMalformed},
		{"empty signature", ak, func() goattest.CertificationParameters {
			p := ev.key
			p.CreateSignature = nil
			return p
		}, attest.ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := attest.VerifyKeyCertification(tc.ak, tc.params())
			if got != nil {
				t.Error("VerifyKeyCertification returned a key with an error")
			}
			wantReason(t, err, tc.want)
		})
	}
}

func TestVerifyCSRRejects(t *testing.T) {
	f := needTPM(t)
	ev := f.golden

	soft, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	softCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, soft)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		csr  []byte
		key  crypto.PublicKey
		want attest.Reason
	}{
		{"CSR from a software key", softCSR, ev.keyPub, attest.ReasonCSRKeyMismatch},
		{"TPM CSR checked against another key", ev.csr, &soft.PublicKey, attest.ReasonCSRKeyMismatch},
		{"broken signature", flip(ev.csr, -1), ev.keyPub, attest.ReasonCSRInvalid},
		{"signed subject tampered", flipSubject(t, ev.csr), ev.keyPub, attest.ReasonCSRInvalid},
		{"garbage", []byte("not a CSR"), ev.keyPub, attest.ReasonCSRInvalid},
		{"trailing data", append(bytes.Clone(ev.csr), 0), ev.keyPub, attest.ReasonCSRInvalid},
		{"empty", nil, ev.keyPub, attest.ReasonMalformed},
		{"oversized", make([]byte, attest.MaxCSRSize+1), ev.keyPub, attest.ReasonMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := attest.VerifyCSR(tc.csr, tc.key)
			if got != nil {
				t.Error("VerifyCSR returned a CSR with an error")
			}
			wantReason(t, err, tc.want)
		})
	}
}

// flipSubject changes one character of the CSR's signed subject
// ("device" -> "devicE") without touching the signature.
func flipSubject(t *testing.T, csr []byte) []byte {
	t.Helper()
	i := bytes.Index(csr, []byte("device"))
	if i < 0 {
		t.Fatal("CSR subject not found")
	}
	c := bytes.Clone(csr)
	c[i+5] = 'E'
	return c
}
