package tpmsim

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// NV indices of EK certificates, from the TCG PC Client Platform TPM Profile
// (PTP) / TCG EK Credential Profile 2.0, section 2.2.1.4 (low range).
const (
	// RSAEKCertificateIndex holds the RSA 2048 EK certificate.
	RSAEKCertificateIndex tpm2.TPMHandle = 0x01c00002
	// ECCEKCertificateIndex holds the ECC NIST P-256 EK certificate.
	ECCEKCertificateIndex tpm2.TPMHandle = 0x01c0000a
)

// maxNVChunk is the largest NV_Write the TPM must accept: TPM2B_MAX_NV_BUFFER
// is implementation-specific, 1024 is what every TPM (and the simulator)
// supports.
const maxNVChunk = 1024

// ProvisionEKCertificate writes an RSA EK certificate (DER) into the TPM's NV
// index 0x01c00002 the way a TPM vendor's factory does: NV_DefineSpace on the
// platform hierarchy (empty platform auth, as on a fresh simulator) with
// attributes PPWrite, PPRead, OwnerRead, AuthRead, NoDA and PlatformCreate,
// then NV_Write in chunks of at most 1024 bytes. AuthRead lets go-attestation
// read it with the index as its own authorization. An existing index is
// undefined first, so provisioning is idempotent.
func ProvisionEKCertificate(tpm transport.TPM, der []byte) error {
	return provisionNV(tpm, RSAEKCertificateIndex, der)
}

func provisionNV(tpm transport.TPM, index tpm2.TPMHandle, data []byte) error {
	if len(data) == 0 || len(data) > 0xffff {
		return fmt.Errorf("EK certificate of %d bytes cannot be stored in NV", len(data))
	}

	// Step 1: undefine an existing index with the hierarchy that owns it.
	if rsp, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(tpm); err == nil {
		pub, err := rsp.NVPublic.Contents()
		if err != nil {
			return fmt.Errorf("decoding public area of NV index 0x%08x: %w", index, err)
		}
		owner := tpm2.TPMRHOwner
		if pub.Attributes.PlatformCreate {
			owner = tpm2.TPMRHPlatform
		}
		undefine := tpm2.NVUndefineSpace{
			AuthHandle: owner,
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: rsp.NVName},
		}
		if _, err := undefine.Execute(tpm); err != nil {
			return fmt.Errorf("undefining existing NV index 0x%08x: %w", index, err)
		}
	} else if !errors.Is(err, tpm2.TPMRCHandle) {
		return fmt.Errorf("reading public area of NV index 0x%08x: %w", index, err)
	}

	// Step 2: define the index on the platform hierarchy.
	define := tpm2.NVDefineSpace{
		AuthHandle: tpm2.TPMRHPlatform,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: index,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{
				PPWrite:        true,
				PPRead:         true,
				OwnerRead:      true,
				AuthRead:       true,
				NoDA:           true,
				PlatformCreate: true,
				NT:             tpm2.TPMNTOrdinary,
			},
			DataSize: uint16(len(data)),
		}),
	}
	if _, err := define.Execute(tpm); err != nil {
		return fmt.Errorf("defining NV index 0x%08x: %w", index, err)
	}

	// Step 3: write in chunks, authorized by the platform hierarchy
	// (PPWrite). The index's name changes after the first write
	// (TPMA_NV_WRITTEN), so read it back before each chunk.
	for off := 0; off < len(data); off += maxNVChunk {
		end := min(off+maxNVChunk, len(data))
		rsp, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(tpm)
		if err != nil {
			return fmt.Errorf("reading public area of NV index 0x%08x: %w", index, err)
		}
		write := tpm2.NVWrite{
			AuthHandle: tpm2.TPMRHPlatform,
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: rsp.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}
		if _, err := write.Execute(tpm); err != nil {
			return fmt.Errorf("writing NV index 0x%08x at offset %d: %w", index, off, err)
		}
	}
	return nil
}
