package loadgen

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
)

// Identity is one simulated device's TPM identity, made before timing:
// what a real device keeps between enrollments. The AK and key blobs are
// wrapped by the storage root key of the simulator seed they were made
// under, so any Prover opened with that seed can use them.
type Identity struct {
	Index    int    `json:"index"`
	DeviceID string `json:"device_id"`
	// EKNonce selects this device's EK among those of the seed.
	EKNonce       []byte `json:"ek_nonce"`
	EKPublic      []byte `json:"ek_public"`      // PKIX DER
	EKCertificate []byte `json:"ek_certificate"` // DER, manufacturer-signed
	// AKBlob and KeyBlob are go-attestation's AK.Marshal and Key.Marshal.
	AKBlob  []byte                      `json:"ak_blob"`
	KeyBlob []byte                      `json:"key_blob"`
	AK      api.AttestationParameters   `json:"ak"`
	Key     api.CertificationParameters `json:"key"`
}

// BeginRequest is what the device sends to begin an enrollment.
func (id *Identity) BeginRequest() *api.BeginRequest {
	return &api.BeginRequest{
		EKPublic:      id.EKPublic,
		EKCertificate: id.EKCertificate,
		AK:            id.AK,
		Device:        api.DeviceInfo{Hostname: "bench-" + id.DeviceID[:12], AgentVersion: device.Version},
	}
}

// EKNonce derives device index's EK nonce within fleet: distinct fleets
// (random per identity set) give distinct devices on the same seed.
func EKNonce(fleet []byte, index int) []byte {
	h := sha256.New()
	h.Write([]byte("edgeenroll bench EK nonce\x00"))
	h.Write(fleet)
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(index))
	h.Write(b[:])
	return h.Sum(nil)
}
