package tpmsim

import (
	"crypto/ecdsa"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Handles of an ECC NIST P-256 endorsement key, from the TCG EK Credential
// Profile 2.0, section 2.2.1.4 (NV indices, low range) and the TCG Registry
// of Reserved TPM 2.0 Handles and Localities, section 2.3.1 (persistent EK
// handles).
const (
	// ECCEKHandle is where a provisioned TPM keeps its ECC P-256 EK, and
	// where go-attestation's TPM.EKCertificates looks for it.
	ECCEKHandle tpm2.TPMHandle = 0x81010002
	// ECCEKNonceIndex holds the ECC EK nonce: the value a vendor puts in
	// the EK template's unique.x.
	ECCEKNonceIndex tpm2.TPMHandle = 0x01c0000b
)

// MaxECCEKNonce is the largest EK nonce: unique.x of a P-256 key.
const MaxECCEKNonce = 32

// ECCEKTemplate returns the TCG default ECC NIST P-256 EK template (EK
// Credential Profile 2.0, B.3.4, template L-2: restricted decryption key,
// AES-128-CFB, admin by TPM2_PolicySecret(TPM_RH_ENDORSEMENT)) with nonce in
// unique.x, zero-padded to 32 bytes, and a zero unique.y. An empty nonce
// gives the profile's default template. A primary key is derived from the
// hierarchy seed and its template, so one endorsement seed with different
// nonces yields different, reproducible EKs: the profile's EK nonce
// mechanism, which go-attestation also applies (reading 0x01c0000b).
func ECCEKTemplate(nonce []byte) (tpm2.TPMTPublic, error) {
	if len(nonce) > MaxECCEKNonce {
		return tpm2.TPMTPublic{}, fmt.Errorf("ECC EK nonce of %d bytes, at most %d", len(nonce), MaxECCEKNonce)
	}
	x := make([]byte, MaxECCEKNonce)
	copy(x, nonce)
	t := tpm2.ECCEKTemplate
	t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: x},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, MaxECCEKNonce)},
	})
	return t, nil
}

// CreateECCEK creates the ECC EK from ECCEKTemplate(nonce) in the
// endorsement hierarchy and persists it at ECCEKHandle, replacing any object
// there (owner authorization, empty as on a fresh simulator). It returns the
// EK public key. It writes no certificate: see ManufactureECCEK.
func CreateECCEK(tpm transport.TPM, nonce []byte) (*ecdsa.PublicKey, error) {
	tmpl, err := ECCEKTemplate(nonce)
	if err != nil {
		return nil, err
	}
	// Step 1: evict whatever is persisted at the EK handle.
	if rsp, err := (tpm2.ReadPublic{ObjectHandle: ECCEKHandle}).Execute(tpm); err == nil {
		evict := tpm2.EvictControl{
			Auth:             tpm2.TPMRHOwner,
			ObjectHandle:     &tpm2.NamedHandle{Handle: ECCEKHandle, Name: rsp.Name},
			PersistentHandle: ECCEKHandle,
		}
		if _, err := evict.Execute(tpm); err != nil {
			return nil, fmt.Errorf("evicting the EK persisted at 0x%08x: %w", ECCEKHandle, err)
		}
	} else if !errors.Is(err, tpm2.TPMRCHandle) {
		return nil, fmt.Errorf("reading the object persisted at 0x%08x: %w", ECCEKHandle, err)
	}

	// Step 2: derive the EK from the endorsement seed and the template.
	created, err := (tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tmpl),
	}).Execute(tpm)
	if err != nil {
		return nil, fmt.Errorf("creating the ECC EK: %w", err)
	}
	defer (tpm2.FlushContext{FlushHandle: created.ObjectHandle}).Execute(tpm)

	// Step 3: persist it where provisioned TPMs keep it.
	persist := tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     &tpm2.NamedHandle{Handle: created.ObjectHandle, Name: created.Name},
		PersistentHandle: ECCEKHandle,
	}
	if _, err := persist.Execute(tpm); err != nil {
		return nil, fmt.Errorf("persisting the ECC EK at 0x%08x: %w", ECCEKHandle, err)
	}

	pub, err := created.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("decoding the ECC EK public area: %w", err)
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("decoding the ECC EK parameters: %w", err)
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("decoding the ECC EK point: %w", err)
	}
	key, err := tpm2.ECDSAPub(parms, point)
	if err != nil {
		return nil, fmt.Errorf("converting the ECC EK public key: %w", err)
	}
	return key, nil
}

// ProvisionECCEKCertificate writes an ECC P-256 EK certificate (DER) into
// NV index 0x01c0000a, exactly as ProvisionEKCertificate does for the RSA
// index. go-attestation's TPM.EKCertificates pairs it with the EK persisted
// at ECCEKHandle; TPM.EKs ignores it (it only reads the RSA index).
func ProvisionECCEKCertificate(tpm transport.TPM, der []byte) error {
	return provisionNV(tpm, ECCEKCertificateIndex, der)
}

// ManufactureECCEK plays the TPM vendor for an ECC EK: it creates and
// persists the EK with nonce (CreateECCEK), records a non-empty nonce in
// NV index ECCEKNonceIndex as the profile prescribes, has m issue the EK
// certificate, and provisions it at 0x01c0000a. It returns the EK public key
// and the certificate (DER).
func ManufactureECCEK(tpm transport.TPM, m *Manufacturer, nonce []byte) (*ecdsa.PublicKey, []byte, error) {
	pub, err := CreateECCEK(tpm, nonce)
	if err != nil {
		return nil, nil, err
	}
	if len(nonce) > 0 {
		if err := provisionNV(tpm, ECCEKNonceIndex, nonce); err != nil {
			return nil, nil, fmt.Errorf("recording the EK nonce: %w", err)
		}
	}
	der, err := m.IssueEKCertificate(pub)
	if err != nil {
		return nil, nil, err
	}
	if err := ProvisionECCEKCertificate(tpm, der); err != nil {
		return nil, nil, err
	}
	return pub, der, nil
}
