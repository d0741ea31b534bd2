package loadgen

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// srkHandle is where TCG provisioning guidance puts the RSA storage root
// key, and where go-attestation loads AK and key blobs under.
const srkHandle tpm2.TPMHandle = 0x81000001

// Prover is the TPM half of many simulated devices: one in-process
// reference simulator opened with a fixed seed. Devices differ by their EK
// nonce; their AKs and keys live as blobs under the seed's storage root
// key. It is not safe for concurrent use, and only one may be open per
// process (the simulator is a C singleton).
type Prover struct {
	sim *tpmsim.TPM
	tpm *goattest.TPM
	mfr *tpmsim.Manufacturer
	// ek is the ECC EK as go-attestation's EKCertificates returns it: its
	// unexported handle is the persistent EK handle, which every device's
	// EK occupies in turn.
	ek goattest.EK
	// cur is the EK nonce of the EK persisted now.
	cur []byte
	// pcrs are the SHA-256 PCR values. Nothing extends them during a run
	// (there is no firmware), so they are read once.
	pcrs map[int][]byte
}

// OpenProver opens the process's simulator with seed (non-zero), gives it
// an owner-hierarchy RSA storage root key, and checks that go-attestation
// finds an ECC EK with its certificate from mfr. mfr may be nil for a
// Prover that only answers (never makes identities).
func OpenProver(seed int64, mfr *tpmsim.Manufacturer) (_ *Prover, err error) {
	if seed == 0 {
		return nil, errors.New("loadgen: the simulator seed must be non-zero (workers must share it)")
	}
	sim, err := tpmsim.Open(seed)
	if err != nil {
		return nil, err
	}
	p := &Prover{sim: sim, mfr: mfr}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if err := provisionSRK(sim); err != nil {
		return nil, err
	}
	if p.tpm, err = goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: sim}); err != nil {
		return nil, fmt.Errorf("opening the simulated TPM: %w", err)
	}
	// A probe EK: the handle go-attestation reports for an ECC EK with a
	// certificate is the one every device's EK is persisted at.
	probeMfr := mfr
	if probeMfr == nil {
		if probeMfr, err = tpmsim.NewManufacturer("enroll-bench probe"); err != nil {
			return nil, err
		}
	}
	nonce := []byte("enroll-bench probe")
	_, der, err := tpmsim.ManufactureECCEK(sim, probeMfr, nonce)
	if err != nil {
		return nil, err
	}
	if p.ek, err = p.findEK(der); err != nil {
		return nil, err
	}
	p.cur = nonce
	all, err := p.tpm.PCRs(goattest.HashSHA256)
	if err != nil {
		return nil, fmt.Errorf("reading PCRs: %w", err)
	}
	p.pcrs = make(map[int][]byte, len(all))
	for _, pcr := range all {
		p.pcrs[pcr.Index] = pcr.Digest
	}
	return p, nil
}

// provisionSRK creates the TCG default RSA storage root key in the owner
// hierarchy and persists it, as a provisioned TPM has it. Its wrapping keys
// derive from the storage seed, so blobs made under it load in any
// simulator opened with the same seed (go-attestation's own fallback puts
// the SRK in the endorsement hierarchy, whose blobs do not carry over).
func provisionSRK(sim *tpmsim.TPM) error {
	created, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.RSASRKTemplate)}).Execute(sim)
	if err != nil {
		return fmt.Errorf("creating the storage root key: %w", err)
	}
	defer (tpm2.FlushContext{FlushHandle: created.ObjectHandle}).Execute(sim)
	persist := tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     &tpm2.NamedHandle{Handle: created.ObjectHandle, Name: created.Name},
		PersistentHandle: srkHandle,
	}
	if _, err := persist.Execute(sim); err != nil {
		return fmt.Errorf("persisting the storage root key: %w", err)
	}
	return nil
}

// findEK returns the EK go-attestation pairs with the certificate der, as a
// real agent reads it.
func (p *Prover) findEK(der []byte) (goattest.EK, error) {
	eks, err := p.tpm.EKCertificates()
	if err != nil {
		return goattest.EK{}, fmt.Errorf("reading EK certificates: %w", err)
	}
	for _, ek := range eks {
		if ek.Certificate != nil && bytes.Equal(ek.Certificate.Raw, der) {
			return ek, nil
		}
	}
	return goattest.EK{}, errors.New("go-attestation does not report the ECC EK with its certificate")
}

// Close closes the simulator.
func (p *Prover) Close() error {
	if p.tpm != nil {
		p.tpm.Close() // closes the simulator through its command channel
		p.tpm, p.sim = nil, nil
	}
	if p.sim != nil {
		p.sim.Close()
		p.sim = nil
	}
	return nil
}

// NewIdentity plays the TPM vendor and the device's first boot for device
// index: an ECC EK from nonce with a certificate from the manufacturer in
// NV, read back through go-attestation as an agent reads it, then an ECDSA
// AK and a P-256 key certified by it, as device.Agent makes them.
func (p *Prover) NewIdentity(index int, nonce []byte) (*Identity, error) {
	if p.mfr == nil {
		return nil, errors.New("loadgen: this prover has no manufacturer to certify EKs")
	}
	_, der, err := tpmsim.ManufactureECCEK(p.sim, p.mfr, nonce)
	if err != nil {
		return nil, err
	}
	p.cur = slices.Clone(nonce)
	ek, err := p.findEK(der)
	if err != nil {
		return nil, err
	}
	ekDER, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		return nil, fmt.Errorf("encoding the EK: %w", err)
	}
	sum := sha256.Sum256(ekDER)
	id := &Identity{Index: index, DeviceID: hex.EncodeToString(sum[:]), EKNonce: slices.Clone(nonce), EKPublic: ekDER, EKCertificate: der}

	ak, err := p.tpm.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
	if err != nil {
		return nil, fmt.Errorf("creating the AK: %w", err)
	}
	defer ak.Close(p.tpm)
	key, err := p.tpm.NewKey(ak, &goattest.KeyConfig{Algorithm: goattest.ECDSA, Size: 256})
	if err != nil {
		return nil, fmt.Errorf("creating the TPM key: %w", err)
	}
	defer key.Close()
	if id.AKBlob, err = ak.Marshal(); err != nil {
		return nil, fmt.Errorf("exporting the AK: %w", err)
	}
	if id.KeyBlob, err = key.Marshal(); err != nil {
		return nil, fmt.Errorf("exporting the TPM key: %w", err)
	}
	ap := ak.AttestationParameters()
	id.AK = api.AttestationParameters{Public: ap.Public, CreateData: ap.CreateData, CreateAttestation: ap.CreateAttestation, CreateSignature: ap.CreateSignature}
	cp := key.CertificationParameters()
	id.Key = api.CertificationParameters{Public: cp.Public, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature}
	return id, nil
}

// useEK persists id's EK at the EK handle unless it is there already.
func (p *Prover) useEK(id *Identity) (goattest.EK, error) {
	ek := p.ek
	if !bytes.Equal(p.cur, id.EKNonce) {
		p.cur = nil
		pub, err := tpmsim.CreateECCEK(p.sim, id.EKNonce)
		if err != nil {
			return ek, err
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil || !bytes.Equal(der, id.EKPublic) {
			return ek, fmt.Errorf("device %d: this TPM derives another EK from its nonce (identity made under another simulator seed?)", id.Index)
		}
		p.cur = slices.Clone(id.EKNonce)
	}
	pub, err := x509.ParsePKIXPublicKey(id.EKPublic)
	if err != nil {
		return ek, fmt.Errorf("device %d: EK public key: %w", id.Index, err)
	}
	ek.Public = pub
	ek.Certificate = nil // only Public and the handle matter to activation
	return ek, nil
}

// Answer runs the TPM half of the protocol for id, as device.Agent does:
// credential activation with the device's EK, a quote of the requested
// PCRs over the server's nonce, and a CSR signed by the certified TPM key.
// It also returns the activation secret, from which a transport that
// seals replies (MQTT) derives the session's key (sealing.Key).
func (p *Prover) Answer(id *Identity, br *api.BeginResponse) (_ *api.FinishRequest, secret []byte, _ error) {
	if len(br.PCRs) == 0 || len(br.PCRs) > api.MaxPCRs {
		return nil, nil, fmt.Errorf("server asked for %d PCRs", len(br.PCRs))
	}
	ek, err := p.useEK(id)
	if err != nil {
		return nil, nil, err
	}

	// The AK: activation and quote. Only a few transient objects fit, so
	// the AK is flushed before the key is loaded.
	ak, err := p.tpm.LoadAK(id.AKBlob)
	if err != nil {
		return nil, nil, fmt.Errorf("device %d: loading the AK: %w", id.Index, err)
	}
	secret, err = ak.ActivateCredentialWithEK(p.tpm, goattest.EncryptedCredential{Credential: br.Challenge.Credential, Secret: br.Challenge.Secret}, ek)
	if err != nil {
		ak.Close(p.tpm)
		return nil, nil, fmt.Errorf("device %d: activating the credential: %w", id.Index, err)
	}
	quote, err := ak.QuotePCRs(p.tpm, br.Nonce, goattest.HashSHA256, br.PCRs)
	ak.Close(p.tpm)
	if err != nil {
		return nil, nil, fmt.Errorf("device %d: quoting PCRs %v: %w", id.Index, br.PCRs, err)
	}
	pcrs := make([]api.PCR, 0, len(br.PCRs))
	for _, i := range slices.Sorted(slices.Values(br.PCRs)) {
		d, ok := p.pcrs[i]
		if !ok {
			return nil, nil, fmt.Errorf("server asked for PCR %d, which the TPM lacks", i)
		}
		pcrs = append(pcrs, api.PCR{Index: i, Digest: d})
	}

	// The key: a CSR signed in the TPM.
	key, err := p.tpm.LoadKey(id.KeyBlob)
	if err != nil {
		return nil, nil, fmt.Errorf("device %d: loading the TPM key: %w", id.Index, err)
	}
	defer key.Close()
	priv, err := key.Private(key.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("device %d: opening the TPM key: %w", id.Index, err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("device %d: TPM key is a %T, not a signer", id.Index, priv)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.DeviceID}}, signer)
	if err != nil {
		return nil, nil, fmt.Errorf("device %d: signing the CSR in the TPM: %w", id.Index, err)
	}
	return &api.FinishRequest{
		SessionID:       br.SessionID,
		ActivationProof: api.ActivationProof(secret, br.SessionID),
		Quote:           api.Quote{Quote: quote.Quote, Signature: quote.Signature},
		PCRs:            pcrs,
		Key:             id.Key,
		CSR:             csr,
	}, secret, nil
}

// Sign signs digest with id's TPM key, in the TPM, as a device signs its
// side of a mutual TLS handshake with the key its certificate is for.
func (p *Prover) Sign(id *Identity, digest []byte, hash crypto.Hash) ([]byte, error) {
	key, err := p.tpm.LoadKey(id.KeyBlob)
	if err != nil {
		return nil, fmt.Errorf("device %d: loading the TPM key: %w", id.Index, err)
	}
	defer key.Close()
	priv, err := key.Private(key.Public())
	if err != nil {
		return nil, fmt.Errorf("device %d: opening the TPM key: %w", id.Index, err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("device %d: TPM key is a %T, not a signer", id.Index, priv)
	}
	return signer.Sign(rand.Reader, digest, hash)
}
