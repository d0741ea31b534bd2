package api

import (
	"fmt"
	"time"
)

// Admin API paths. Every admin call needs an operator client certificate
// issued by the server's CA (enrolld writes the first one into its data
// directory).
const (
	PathAdminPreregistrations = "/v1/admin/preregistrations"
	PathAdminDevices          = "/v1/admin/devices"
)

// Admin limits.
const (
	// MaxAdminRequestBytes bounds an admin request: room for a batch of
	// MaxPreregistrationsPerRequest rows.
	MaxAdminRequestBytes = 8 << 20
	// MaxPreregistrationsPerRequest bounds one pre-registration batch.
	MaxPreregistrationsPerRequest = 10000
	// MaxSerialLen and MaxGroupLen bound factory fields.
	MaxSerialLen = 128
	MaxGroupLen  = 64
)

// CodeForbidden: the operator certificate is valid but lacks the role.
const CodeForbidden Code = "forbidden"

// Preregistration registers one device identity before it ships.
type Preregistration struct {
	// DeviceID is the hex SHA-256 of the EK public key (PKIX DER).
	DeviceID string `json:"device_id"`
	Serial   string `json:"serial,omitempty"`
	Group    string `json:"group,omitempty"`
}

// PreregisterRequest registers a batch, all or nothing.
type PreregisterRequest struct {
	Devices []Preregistration `json:"devices"`
}

// PreregisterResponse reports what the batch did.
type PreregisterResponse struct {
	Registered int `json:"registered"`
}

// Validate checks every row and names the first bad one.
func (r *PreregisterRequest) Validate() error {
	if len(r.Devices) == 0 || len(r.Devices) > MaxPreregistrationsPerRequest {
		return Errorf(CodeBadRequest, "devices must list 1 to %d rows, got %d", MaxPreregistrationsPerRequest, len(r.Devices))
	}
	seen := make(map[string]int, len(r.Devices))
	for i, d := range r.Devices {
		if !ValidDeviceID(d.DeviceID) {
			return Errorf(CodeBadRequest, "devices[%d].device_id %q must be 64 lowercase hex characters (SHA-256 of the EK public key)", i, d.DeviceID)
		}
		if j, dup := seen[d.DeviceID]; dup {
			return Errorf(CodeBadRequest, "devices[%d] repeats the device of devices[%d]", i, j)
		}
		seen[d.DeviceID] = i
		if len(d.Serial) > MaxSerialLen || len(d.Group) > MaxGroupLen {
			return Errorf(CodeBadRequest, "devices[%d]: serial is limited to %d bytes and group to %d", i, MaxSerialLen, MaxGroupLen)
		}
		if err := text(fmt.Sprintf("devices[%d].serial", i), d.Serial); err != nil {
			return err
		}
		if err := text(fmt.Sprintf("devices[%d].group", i), d.Group); err != nil {
			return err
		}
	}
	return nil
}

// DeviceSummary is one device as the admin API lists it.
type DeviceSummary struct {
	DeviceID       string    `json:"device_id"`
	Status         string    `json:"status"`
	Admission      string    `json:"admission"`
	Serial         string    `json:"serial,omitempty"`
	Group          string    `json:"group,omitempty"`
	Hostname       string    `json:"hostname,omitempty"`
	CertSerial     string    `json:"cert_serial"`
	CertNotAfter   time.Time `json:"cert_not_after"`
	BundleVersion  uint64    `json:"bundle_version"`
	Enrollments    int       `json:"enrollments"`
	LastEnrolledAt time.Time `json:"last_enrolled_at"`
}

// DeviceList is the answer to GET PathAdminDevices.
type DeviceList struct {
	Devices []DeviceSummary `json:"devices"`
}
