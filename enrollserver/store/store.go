package store

import (
	"context"
	"time"
)

// Store is the server's persistent state. Implementations are safe for
// concurrent use, and every method that writes is atomic.
type Store interface {
	// CreateSession records a begun enrollment. The ID must be new.
	CreateSession(ctx context.Context, s *Session) error
	// Session returns a live session, ErrNotFound if there is none, or
	// ErrSessionExpired if its TTL passed at now.
	Session(ctx context.Context, id string, now time.Time) (*Session, error)
	// FinishEnrollment consumes session id and records the outcome in one
	// transaction: the session is deleted (single use), the device record
	// becomes apply(previous record or nil), cert is recorded and the
	// audit record apply returns (if any) is appended. It returns
	// ErrSessionUsed if the session does not exist and ErrSessionExpired
	// if it expired at now; an error from apply is returned as is. Then
	// nothing is written.
	FinishEnrollment(ctx context.Context, id string, now time.Time, cert *IssuedCertificate, apply func(prev *Device) (*Device, *AuditRecord, error)) (*Device, error)
	// CompletedSession returns the device ID of a session that
	// FinishEnrollment consumed, until the session's TTL passes, or
	// ErrNotFound. A store that keeps sessions in memory may forget it
	// sooner (at a restart, or past its bound on finished sessions; see
	// Options.MemorySessions): the device is then told to begin again.
	CompletedSession(ctx context.Context, id string) (string, error)
	// PurgeExpiredSessions deletes sessions (live and completed) whose TTL
	// passed at now and returns how many live ones it deleted.
	PurgeExpiredSessions(ctx context.Context, now time.Time) (int, error)

	// Device returns the device with that ID or ErrNotFound.
	Device(ctx context.Context, id string) (*Device, error)
	// Devices calls fn for each device in ID order until fn returns false.
	Devices(ctx context.Context, fn func(*Device) bool) error
	// Certificate returns an issued certificate by serial (hex).
	Certificate(ctx context.Context, serial string) (*IssuedCertificate, error)

	// PutPreregistrations records pre-registrations in one transaction.
	// Re-putting an identical record is a no-op; changing serial or group
	// of an existing one replaces it.
	PutPreregistrations(ctx context.Context, regs []*Preregistration) error
	// Preregistration returns the pre-registration of a device ID (the EK
	// hash) or ErrNotFound.
	Preregistration(ctx context.Context, deviceID string) (*Preregistration, error)
	// Preregistrations calls fn for each pre-registration in ID order until
	// fn returns false.
	Preregistrations(ctx context.Context, fn func(*Preregistration) bool) error

	FleetStore
	FirmwareStore

	// Close releases the store.
	Close() error
}

// Admission says what made the server trust a device's EK.
type Admission string

// Admission kinds.
const (
	// AdmissionEKCertificate: the EK certificate chained to a configured
	// manufacturer root.
	AdmissionEKCertificate Admission = "ek_certificate"
	// AdmissionPreregistered: the EK hash was pre-registered by the
	// factory line.
	AdmissionPreregistered Admission = "preregistered"
	// AdmissionOperator: neither, but an operator approved the device
	// (only when the server runs open, not closed).
	AdmissionOperator Admission = "operator"
)

// DeviceStatus is the lifecycle state of a device record.
type DeviceStatus string

// Device statuses.
const (
	// StatusPending: the device asked to enroll and waits for an
	// operator (its group's admission is manual, or the server is open
	// and the device is a stranger). It has no certificate.
	StatusPending DeviceStatus = "pending"
	// StatusApproved: an operator approved or re-admitted the device; its
	// next enrollment proceeds whatever its group's admission policy.
	StatusApproved DeviceStatus = "approved"
	// StatusEnrolled: the device holds a certificate.
	StatusEnrolled DeviceStatus = "enrolled"
	// StatusDenied: an operator denied the device; begin is refused.
	StatusDenied DeviceStatus = "denied"
	// StatusRevoked: an operator revoked the device and its
	// certificates; begin and whoami are refused.
	StatusRevoked DeviceStatus = "revoked"
	// StatusRefused: the device was admitted but measured boot refused
	// its first enrollment, so it has no certificate; the record keeps
	// what was measured (Device.Firmware). It enrolls once its boot
	// passes; PutPending turns it into a pending record.
	StatusRefused DeviceStatus = "refused"
)

// Statuses lists every device status.
func Statuses() []DeviceStatus {
	return []DeviceStatus{StatusPending, StatusApproved, StatusEnrolled, StatusDenied, StatusRevoked, StatusRefused}
}

// Session is a begun enrollment awaiting finish.
type Session struct {
	ID            string    `json:"id"`
	DeviceID      string    `json:"device_id"`
	CorrelationID string    `json:"correlation_id"`
	EKPublic      []byte    `json:"ek_public"`
	Admission     Admission `json:"admission"`
	// AKPublic is the AK's TPMT_PUBLIC, whose creation parameters begin
	// verified.
	AKPublic []byte `json:"ak_public"`
	Nonce    []byte `json:"nonce"`
	// ProofHash is SHA-256 of the expected activation proof. The secret
	// itself is never stored.
	ProofHash []byte            `json:"proof_hash"`
	PCRs      []int             `json:"pcrs"`
	Serial    string            `json:"serial,omitempty"`
	Group     string            `json:"group,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Device    DeviceInfo        `json:"device,omitzero"`
	// EKIssuer is the subject of the verified EK certificate's issuer.
	EKIssuer string `json:"ek_issuer,omitempty"`
	// CertLifetime is the device certificate lifetime the group's policy
	// chose at begin (0: the server default).
	CertLifetime time.Duration `json:"cert_lifetime,omitempty"`
	// Renewal is set when the device held an unexpired certificate at
	// begin.
	Renewal bool `json:"renewal,omitempty"`
	// Sealed: begun over a transport that seals the finish answer to the
	// device (MQTT); it is finished only over such a transport.
	Sealed bool `json:"sealed,omitempty"`
	// MeasuredBoot, RequireSecureBoot and RequiredPCRs are the group's
	// measured-boot policy at begin (MeasuredBoot "" is off); PCRs
	// includes RequiredPCRs.
	MeasuredBoot      string    `json:"measured_boot,omitempty"`
	RequireSecureBoot bool      `json:"require_secure_boot,omitempty"`
	RequiredPCRs      []int     `json:"required_pcrs,omitempty"`
	CreatedAt         time.Time `json:"created_at"`
	ExpiresAt         time.Time `json:"expires_at"`
}

// DeviceInfo is what a device said about itself: untrusted, informational.
type DeviceInfo struct {
	Hostname     string `json:"hostname,omitempty"`
	AgentVersion string `json:"agent_version,omitempty"`
}

// Device is an enrolled device. Its ID is the hex SHA-256 of its EK public
// key, so a device has one record however often it enrolls.
type Device struct {
	ID        string       `json:"id"`
	Status    DeviceStatus `json:"status"`
	Admission Admission    `json:"admission"`
	EKPublic  []byte       `json:"ek_public"`
	// EKIssuer is the subject of the EK certificate's issuer, if any.
	EKIssuer string            `json:"ek_issuer,omitempty"`
	Serial   string            `json:"serial,omitempty"`
	Group    string            `json:"group,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Info     DeviceInfo        `json:"info,omitzero"`
	AKPublic []byte            `json:"ak_public"`
	// KeyPublic is the PKIX DER of the TPM-resident key the certificate
	// was issued for.
	KeyPublic []byte `json:"key_public"`
	// CertificateChain is the last issued chain, DER, leaf first.
	CertificateChain [][]byte  `json:"certificate_chain"`
	CertSerial       string    `json:"cert_serial"`
	CertNotAfter     time.Time `json:"cert_not_after"`
	Bundle           string    `json:"bundle"`
	BundleVersion    uint64    `json:"bundle_version"`
	// LastSessionID and LastFinishDigest let a repeated finish of the
	// completed session return the same result.
	LastSessionID    string `json:"last_session_id"`
	LastFinishDigest []byte `json:"last_finish_digest"`
	// LastFinishSealed: that session was begun over a transport that
	// seals its answer, which a repeated finish then gets only sealed.
	LastFinishSealed bool      `json:"last_finish_sealed,omitempty"`
	Enrollments      int       `json:"enrollments"`
	Renewals         int       `json:"renewals,omitempty"`
	FirstEnrolledAt  time.Time `json:"first_enrolled_at"`
	LastEnrolledAt   time.Time `json:"last_enrolled_at"`

	// PendingSince and PendingExpiresAt are set while Status is
	// StatusPending; a pending record is purged at PendingExpiresAt.
	PendingSince     time.Time `json:"pending_since,omitzero"`
	PendingExpiresAt time.Time `json:"pending_expires_at,omitzero"`
	// StatusChangedAt/By/Reason record the last operator decision.
	StatusChangedAt time.Time `json:"status_changed_at,omitzero"`
	StatusChangedBy string    `json:"status_changed_by,omitempty"`
	StatusReason    string    `json:"status_reason,omitempty"`

	// Firmware is the last measured boot (nil if the device never sent
	// an event log), recorded on success and on refusal alike.
	Firmware *FirmwareMeasurement `json:"firmware,omitempty"`
}

// IssuedCertificate records every certificate the server issued.
type IssuedCertificate struct {
	Serial    string    `json:"serial"`
	DeviceID  string    `json:"device_id"`
	SessionID string    `json:"session_id"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Renewal: the device held an unexpired certificate when it began.
	Renewal bool `json:"renewal,omitempty"`
	// RevokedAt and RevocationReason are set once revoked.
	RevokedAt        time.Time `json:"revoked_at,omitzero"`
	RevocationReason string    `json:"revocation_reason,omitempty"`
}

// Preregistration is a device identity registered by the factory line
// before the device first enrolls.
type Preregistration struct {
	// DeviceID is the hex SHA-256 of the EK public key (PKIX DER).
	DeviceID  string            `json:"device_id"`
	Serial    string            `json:"serial,omitempty"`
	Group     string            `json:"group,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
}
