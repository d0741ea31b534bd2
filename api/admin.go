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
	// PathAdminDevice + "/" + ID reads one device; PathAdminDevices + "/"
	// + a DeviceAction changes devices.
	PathAdminStatus       = "/v1/admin/status"
	PathAdminImports      = "/v1/admin/imports"
	PathAdminGroups       = "/v1/admin/groups"
	PathAdminConfig       = "/v1/admin/config"
	PathAdminConfigHist   = "/v1/admin/config/history"
	PathAdminConfigRoll   = "/v1/admin/config/rollback"
	PathAdminCertificates = "/v1/admin/certificates"
	PathAdminAudit        = "/v1/admin/audit"
	PathAdminOperators    = "/v1/admin/operators"
	// PathAdminOperatorsRevoke revokes an operator credential (admin only).
	PathAdminOperatorsRevoke = PathAdminOperators + "/revoke"
	// PathCRL serves the current DER revocation list (application/pkix-crl)
	// to anyone: it is signed by the CA's intermediate.
	PathCRL = "/v1/crl"
	// PathCRLPEM serves the revocation lists of every issuer, PEM, the
	// intermediate in service's first: after an intermediate rotation,
	// certificates of the retired intermediate are covered by its own list
	// until they expire. It is the file for OpenSSL-based relying parties
	// that check leaf certificates (mosquitto's crlfile).
	PathCRLPEM = "/v1/crl.pem"
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
	DeviceID       string            `json:"device_id"`
	Status         string            `json:"status"`
	Admission      string            `json:"admission"`
	Serial         string            `json:"serial,omitempty"`
	Group          string            `json:"group,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	Hostname       string            `json:"hostname,omitempty"`
	CertSerial     string            `json:"cert_serial"`
	CertNotAfter   time.Time         `json:"cert_not_after"`
	BundleVersion  uint64            `json:"bundle_version"`
	Enrollments    int               `json:"enrollments"`
	Renewals       int               `json:"renewals"`
	LastEnrolledAt time.Time         `json:"last_enrolled_at"`
	// PendingSince and PendingExpiresAt are set while Status is pending.
	PendingSince     time.Time `json:"pending_since,omitzero"`
	PendingExpiresAt time.Time `json:"pending_expires_at,omitzero"`
	// StatusChangedAt, StatusChangedBy and StatusReason record the last
	// operator decision (approve, deny, revoke, readmit).
	StatusChangedAt time.Time `json:"status_changed_at,omitzero"`
	StatusChangedBy string    `json:"status_changed_by,omitempty"`
	StatusReason    string    `json:"status_reason,omitempty"`
	// Firmware is the last measured boot, if the device ever sent an
	// event log (or was refused for not sending one).
	Firmware *MeasuredFirmware `json:"firmware,omitempty"`
}

// DeviceList is the answer to GET PathAdminDevices. Query parameters:
// status, group, label (k=v, repeatable), after (a page token), limit.
type DeviceList struct {
	Devices []DeviceSummary `json:"devices"`
	// NextPageToken, when set, is the after= of the next page.
	NextPageToken string `json:"next_page_token,omitempty"`
}

// ImportSummary is one staged import as GET PathAdminImports lists it:
// its metadata and counts, not its rows.
type ImportSummary struct {
	ImportID string `json:"import_id"`
	// Operator started it ("factory/station-3"); it and an admin may
	// abort it (DELETE PathAdminImports/{id}).
	Operator string `json:"operator"`
	// Source and SHA256 name the file, as its start request gave them.
	Source    string    `json:"source,omitempty"`
	SHA256    string    `json:"sha256,omitempty"`
	Partial   bool      `json:"partial"`
	DryRun    bool      `json:"dry_run"`
	CreatedAt time.Time `json:"created_at"`
	// ExpiresAt is when it frees its slot if nobody commits or aborts it.
	ExpiresAt time.Time `json:"expires_at"`
	// Staged counts the rows staged so far, Rejected those refused while
	// staging.
	Staged   int `json:"staged"`
	Rejected int `json:"rejected"`
}

// ImportList answers GET PathAdminImports: the staged imports still open
// (not committed, aborted or expired), oldest first. An operator sees its
// own; an admin, who may abort any, sees every operator's.
type ImportList struct {
	Imports []ImportSummary `json:"imports"`
}
