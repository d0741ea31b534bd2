package loadgen_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/attest"
	"github.com/edgeenroll/edgeenroll/loadgen"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// openProver opens the process's one simulator, skipping without cgo. The
// caller closes it.
func openProver(tb testing.TB, seed int64, mfr *tpmsim.Manufacturer) *loadgen.Prover {
	tb.Helper()
	p, err := loadgen.OpenProver(seed, mfr)
	if errors.Is(err, tpmsim.ErrCgoRequired) {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatalf("OpenProver: %v", err)
	}
	return p
}

// challenge is what the server's begin does for id.
func challenge(tb testing.TB, id *loadgen.Identity) (*api.BeginResponse, []byte) {
	tb.Helper()
	ekPub, err := attest.ParseEKPublic(id.EKPublic)
	if err != nil {
		tb.Fatal(err)
	}
	secret, ec, err := attest.NewActivationChallenge(rand.Reader, ekPub, goattest.AttestationParameters{
		Public: id.AK.Public, CreateData: id.AK.CreateData, CreateAttestation: id.AK.CreateAttestation, CreateSignature: id.AK.CreateSignature,
	})
	if err != nil {
		tb.Fatal(err)
	}
	br := &api.BeginResponse{SessionID: "00112233445566778899aabbccddeeff", DeviceID: id.DeviceID,
		Challenge: api.EncryptedCredential{Credential: ec.Credential, Secret: ec.Secret},
		Nonce:     make([]byte, api.NonceSize), PCRs: []int{0, 1, 2, 3, 4, 5, 6, 7}}
	rand.Read(br.Nonce)
	return br, secret
}

// verifyAnswer runs the server's finish checks on f.
func verifyAnswer(tb testing.TB, id *loadgen.Identity, br *api.BeginResponse, secret []byte, f *api.FinishRequest) {
	tb.Helper()
	want := api.ActivationProof(secret, br.SessionID)
	wantHash, gotHash := sha256.Sum256(want), sha256.Sum256(f.ActivationProof)
	if err := attest.VerifyActivationProof(wantHash[:], gotHash[:]); err != nil {
		tb.Fatalf("activation proof: %v", err)
	}
	ak, err := attest.ParseAKPublic(id.AK.Public)
	if err != nil {
		tb.Fatal(err)
	}
	pcrs := map[int][]byte{}
	for _, p := range f.PCRs {
		pcrs[p.Index] = p.Digest
	}
	if _, err := attest.VerifyQuote(ak, f.Quote.Quote, f.Quote.Signature, pcrs, br.Nonce, br.PCRs); err != nil {
		tb.Fatalf("quote: %v", err)
	}
	key, err := attest.VerifyKeyCertification(ak, goattest.CertificationParameters{Public: f.Key.Public, CreateAttestation: f.Key.CreateAttestation, CreateSignature: f.Key.CreateSignature})
	if err != nil {
		tb.Fatalf("key certification: %v", err)
	}
	csr, err := attest.VerifyCSR(f.CSR, key)
	if err != nil {
		tb.Fatalf("CSR: %v", err)
	}
	if csr.Subject.CommonName != id.DeviceID {
		tb.Errorf("CSR subject %q, want the device ID", csr.Subject.CommonName)
	}
}

// TestProver: identities made under a seed answer real challenges, with
// the EK switched between devices, and survive a reopen of the simulator
// (what lets worker processes share devices).
func TestProver(t *testing.T) {
	mfr, err := tpmsim.NewManufacturer("test manufacturer")
	if err != nil {
		t.Fatal(err)
	}
	p := openProver(t, 7, mfr)
	fleet := []byte("fleet A")
	var ids []*loadgen.Identity
	for i := range 3 {
		id, err := p.NewIdentity(i, loadgen.EKNonce(fleet, i))
		if err != nil {
			t.Fatalf("NewIdentity(%d): %v", i, err)
		}
		ekPub, err := attest.ParseEKPublic(id.EKPublic)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := attest.VerifyEKCertificate(id.EKCertificate, ekPub, poolOf(mfr), nil, nowish()); err != nil {
			t.Fatalf("EK certificate: %v", err)
		}
		if devID, _ := attest.DeviceID(ekPub); devID != id.DeviceID {
			t.Fatalf("device ID %s, want %s", id.DeviceID, devID)
		}
		ids = append(ids, id)
	}
	if ids[0].DeviceID == ids[1].DeviceID {
		t.Fatal("two devices share an EK")
	}
	// Answer out of creation order, so the EK is switched each time.
	for _, i := range []int{0, 2, 1, 0} {
		br, secret := challenge(t, ids[i])
		f, _, err := p.Answer(ids[i], br)
		if err != nil {
			t.Fatalf("Answer(%d): %v", i, err)
		}
		verifyAnswer(t, ids[i], br, secret, f)
	}
	p.Close()

	// Another simulator with the same seed acts for the same devices.
	q := openProver(t, 7, nil)
	defer q.Close()
	br, secret := challenge(t, ids[1])
	f, _, err := q.Answer(ids[1], br)
	if err != nil {
		t.Fatalf("Answer in a reopened simulator: %v", err)
	}
	verifyAnswer(t, ids[1], br, secret, f)
	q.Close()

	// A different seed cannot.
	r := openProver(t, 8, nil)
	defer r.Close()
	if _, _, err := r.Answer(ids[1], br); err == nil || !bytes.Contains([]byte(err.Error()), []byte("another simulator seed")) {
		t.Fatalf("Answer under another seed: %v", err)
	}
}

// Device-side costs on the simulator that size enroll-bench's worker pool:
//
//	go test -run '^$' -bench Prover -benchtime 200x ./loadgen
func BenchmarkProver(b *testing.B) {
	mfr, err := tpmsim.NewManufacturer("bench manufacturer")
	if err != nil {
		b.Fatal(err)
	}
	p := openProver(b, 7, mfr)
	defer p.Close()
	fleet := make([]byte, 16)
	rand.Read(fleet)
	const pool = 64
	ids := make([]*loadgen.Identity, pool)
	b.Run("NewIdentity", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			id, err := p.NewIdentity(i, loadgen.EKNonce(fleet, i))
			if err != nil {
				b.Fatal(err)
			}
			if i < pool {
				ids[i] = id
			}
		}
	})
	for i, id := range ids {
		if id == nil {
			if ids[i], err = p.NewIdentity(i, loadgen.EKNonce(fleet, i)); err != nil {
				b.Fatal(err)
			}
		}
	}
	brs := make([]*api.BeginResponse, pool)
	for i := range brs {
		brs[i], _ = challenge(b, ids[i])
	}
	// Every answer switches the EK, as in a run where any worker serves
	// any device.
	b.Run("Answer", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if _, _, err := p.Answer(ids[i%pool], brs[i%pool]); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The same device again: no EK switch.
	b.Run("AnswerSameEK", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := p.Answer(ids[0], brs[0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
