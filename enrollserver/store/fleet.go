package store

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// FleetStore is the part of Store that fleet operations use: the audit
// log, device decisions, groups, config versions, revocation and staged
// factory imports. Every method that changes state takes the audit records
// of the change and appends them in the same transaction, so the log holds
// exactly the changes that committed.
type FleetStore interface {
	// AppendAudit appends records in one transaction, assigning each the
	// next sequence number (from 1, never reused). It is for events that
	// change nothing else, such as refused calls.
	AppendAudit(ctx context.Context, recs ...*AuditRecord) error
	// AuditLog calls fn for each record with Seq > after, in sequence
	// order, until fn returns false. There is no method that changes or
	// deletes a record.
	AuditLog(ctx context.Context, after uint64, fn func(*AuditRecord) bool) error

	// UpdateDevices applies fn to each listed device (prev is nil when
	// there is no record) in one transaction. fn returns nil to leave a
	// device unchanged; an error from fn aborts the whole transaction and
	// is returned as is.
	UpdateDevices(ctx context.Context, ids []string, fn func(id string, prev *Device) (*DeviceChange, error)) error
	// PutPending records d (Status StatusPending) unless the device has a
	// record already, which it returns with ErrExists (a pending one has
	// its PendingExpiresAt and Info refreshed and is returned without
	// error). A StatusRefused record (admitted, never enrolled) counts as
	// no record: it is replaced by d, keeping its Firmware. A new record
	// is refused with ErrPendingFull when max pending records exist;
	// audit is appended only with a new record.
	PutPending(ctx context.Context, d *Device, max int, audit *AuditRecord) (*Device, error)
	// DevicesByStatus calls fn for each device of status with ID > after,
	// in ID order, until fn returns false.
	DevicesByStatus(ctx context.Context, status DeviceStatus, after string, fn func(*Device) bool) error
	// DevicesAfter is Devices starting after an ID (a page token).
	DevicesAfter(ctx context.Context, after string, fn func(*Device) bool) error
	// PurgeExpiredPending deletes pending records whose PendingExpiresAt
	// passed at now, appending audit(d) for each, and returns how many.
	PurgeExpiredPending(ctx context.Context, now time.Time, audit func(*Device) *AuditRecord) (int, error)

	// Certificates calls fn for each issued certificate of deviceID (all
	// devices if ""), in serial order after the serial after, until fn
	// returns false.
	Certificates(ctx context.Context, deviceID, after string, fn func(*IssuedCertificate) bool) error
	// Revocations calls fn for each revoked certificate in serial order.
	Revocations(ctx context.Context, fn func(*Revocation) bool) error
	// NextCRLNumber returns the next CRL number (1, 2, ...), durably.
	NextCRLNumber(ctx context.Context) (uint64, error)

	// RevokeOperator records that the operator certificate rev.Serial is
	// revoked, appending audit in the same transaction. It returns false,
	// writing nothing, if that serial was revoked already.
	RevokeOperator(ctx context.Context, rev *OperatorRevocation, audit *AuditRecord) (bool, error)
	// OperatorRevocation returns the revocation of an operator
	// certificate's serial, or ErrNotFound.
	OperatorRevocation(ctx context.Context, serial string) (*OperatorRevocation, error)
	// OperatorRevocations calls fn for each operator revocation in serial
	// order until fn returns false.
	OperatorRevocations(ctx context.Context, fn func(*OperatorRevocation) bool) error

	// MergePreregistrations runs plan with a view of the pre-registrations
	// and writes what it returns, in one transaction. It keeps the
	// serial → device index that plan reads through PreregReader.
	MergePreregistrations(ctx context.Context, plan func(PreregReader) (*PreregPlan, error)) error

	// CreateImport opens a staged import unless max are open already
	// (ErrTooManyImports), or perOperator of b.Operator's
	// (ErrOperatorImports); expired ones are not counted. b.ID must be
	// new.
	CreateImport(ctx context.Context, b *ImportBatch, max, perOperator int) error
	// Import returns a staged import (ErrNotFound).
	Import(ctx context.Context, id string) (*ImportBatch, error)
	// ListImports returns the staged imports still open at now (expired
	// ones, purged or not, are left out), oldest first (by CreatedAt,
	// then ID), at most limit of them (none if limit < 1). Each is its
	// record as Import returns it; staged rows are not read.
	ListImports(ctx context.Context, now time.Time, limit int) ([]*ImportBatch, error)
	// StageImport adds rows and row errors to a staged import, refusing
	// with ErrImportExpired after its TTL and ErrImportTooLarge past
	// maxRows (rows plus rejected), or ErrExists if a line is staged
	// twice.
	StageImport(ctx context.Context, id string, now time.Time, rows []*StagedRow, rejected []RowError, maxRows int) (*ImportBatch, error)
	// CommitImport runs plan over the staged rows (in line order) and a
	// view of the pre-registrations, writes what it returns and deletes
	// the staged import, all in one transaction (ErrImportExpired after
	// its TTL; then the import is kept for PurgeExpiredImports).
	CommitImport(ctx context.Context, id string, now time.Time, plan func(b *ImportBatch, rows []*StagedRow, r PreregReader) (*PreregPlan, error)) error
	// DeleteImport discards a staged import (ErrNotFound).
	DeleteImport(ctx context.Context, id string) error
	// PurgeExpiredImports discards staged imports expired at now.
	PurgeExpiredImports(ctx context.Context, now time.Time) (int, error)

	// UpdateGroup sets group name to fn(previous or nil) and appends the
	// audit record fn returns, in one transaction.
	UpdateGroup(ctx context.Context, name string, fn func(prev *Group) (*Group, *AuditRecord, error)) (*Group, error)
	// Group returns a group (ErrNotFound).
	Group(ctx context.Context, name string) (*Group, error)
	// Groups calls fn for each group in name order.
	Groups(ctx context.Context, fn func(*Group) bool) error

	// PutConfig adds a version to scope in one transaction: fn gets the
	// scope's latest version (nil if none) and the number the new one
	// gets, which is above every version of every scope and above floor,
	// and returns the record and its audit record.
	PutConfig(ctx context.Context, scope string, floor uint64, fn func(latest *ConfigVersion, next uint64) (*ConfigVersion, *AuditRecord, error)) (*ConfigVersion, error)
	// Config returns version of scope, or its latest if version is 0
	// (ErrNotFound).
	Config(ctx context.Context, scope string, version uint64) (*ConfigVersion, error)
	// ConfigHistory calls fn for each version of scope, newest first.
	ConfigHistory(ctx context.Context, scope string, fn func(*ConfigVersion) bool) error

	// Stats counts records for status reports.
	Stats(ctx context.Context) (*Stats, error)
}

// DeviceChange is what UpdateDevices writes for one device.
type DeviceChange struct {
	// Device is the new record (nil keeps the old one).
	Device *Device
	// Revoke, if set, revokes every certificate of the device not yet
	// revoked, recording reason; the serials revoked are returned in
	// Revoked after the transaction commits.
	Revoke *Revocation
	// Audit records to append.
	Audit []*AuditRecord
	// Revoked is filled by the store.
	Revoked []string
}

// Revocation records a revoked certificate (and, as DeviceChange.Revoke,
// what to record for each).
type Revocation struct {
	Serial     string    `json:"serial"`
	DeviceID   string    `json:"device_id"`
	RevokedAt  time.Time `json:"revoked_at"`
	Reason     string    `json:"reason,omitempty"`
	ReasonCode int       `json:"reason_code,omitempty"`
	// NotAfter of the certificate: after it, the entry may leave the CRL.
	NotAfter time.Time `json:"not_after"`
}

// OperatorRevocation records a revoked operator credential. Operator
// certificates are checked only by enrolld (every admin call looks its
// serial up), so they are not on the device CRL.
type OperatorRevocation struct {
	// Serial is the certificate's serial number in lowercase hex, as
	// `enrollctl operators issue` prints it.
	Serial string `json:"serial"`
	// Operator names whom it was issued to ("admin/alice"), if known.
	Operator  string    `json:"operator,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	RevokedBy string    `json:"revoked_by"`
	Reason    string    `json:"reason,omitempty"`
}

// PreregReader reads pre-registrations inside MergePreregistrations and
// CommitImport.
type PreregReader interface {
	// Preregistration returns the record of a device ID, or nil.
	Preregistration(deviceID string) (*Preregistration, error)
	// SerialOwner returns the device ID a serial is registered to, or "".
	SerialOwner(serial string) (string, error)
	// Group returns a group record or nil.
	Group(name string) (*Group, error)
	// Prefetch reads at once what Preregistration, SerialOwner and Group
	// will be asked for rows (their device IDs, serials and groups): a
	// store across the network answers a batch of thousands in a few
	// round trips instead of one each. A local store does nothing.
	Prefetch(rows []*StagedRow) error
}

// PreregPlan is what MergePreregistrations and CommitImport write.
type PreregPlan struct {
	Put   []*Preregistration
	Audit []*AuditRecord
}

// ImportBatch is a staged factory import.
type ImportBatch struct {
	ID        string    `json:"id"`
	Operator  string    `json:"operator"`
	Source    string    `json:"source,omitempty"`
	SHA256    string    `json:"sha256,omitempty"`
	Partial   bool      `json:"partial,omitempty"`
	DryRun    bool      `json:"dry_run,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// Staged counts staged rows; Rejected holds the row errors found while
	// staging (all of them: they are bounded by the import's row cap).
	Staged   int        `json:"staged"`
	Rejected []RowError `json:"rejected,omitempty"`
	// CorrelationID of the call that opened the import.
	CorrelationID string `json:"correlation_id,omitempty"`
}

// StagedRow is a validated import row: the device ID is derived already.
type StagedRow struct {
	Line     int               `json:"line"`
	DeviceID string            `json:"device_id"`
	Serial   string            `json:"serial,omitempty"`
	Group    string            `json:"group,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// RowError is a refused import row.
type RowError struct {
	Line   int    `json:"line"`
	Code   string `json:"code"`
	Reason string `json:"reason"`
}

// Group is a named set of devices with one admission policy.
type Group struct {
	Name      string `json:"name"`
	Admission string `json:"admission"`
	// CertLifetime of device certificates; 0 means the server default.
	CertLifetime time.Duration `json:"cert_lifetime,omitempty"`
	Description  string        `json:"description,omitempty"`
	// MeasuredBoot is "off" ("" too) or "enforce"; RequireSecureBoot and
	// RequiredPCRs complete the measured-boot policy. The approved
	// firmware is in the firmware references (FirmwareStore).
	MeasuredBoot      string    `json:"measured_boot,omitempty"`
	RequireSecureBoot bool      `json:"require_secure_boot,omitempty"`
	RequiredPCRs      []int     `json:"required_pcrs,omitempty"`
	UpdatedAt         time.Time `json:"updated_at"`
	UpdatedBy         string    `json:"updated_by"`
}

// ConfigVersion is one version of a scope's config ("group/<name>" or
// "device/<id>").
type ConfigVersion struct {
	Scope          string          `json:"scope"`
	Version        uint64          `json:"version"`
	Config         json.RawMessage `json:"config"`
	CreatedAt      time.Time       `json:"created_at"`
	CreatedBy      string          `json:"created_by"`
	Comment        string          `json:"comment,omitempty"`
	RolledBackFrom uint64          `json:"rolled_back_from,omitempty"`
}

// AuditRecord is one entry of the audit log.
type AuditRecord struct {
	// Seq is assigned by the store.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// ActorKind is operator, device, anonymous, certificate or system.
	ActorKind string `json:"actor_kind"`
	ActorName string `json:"actor_name,omitempty"`
	ActorRole string `json:"actor_role,omitempty"`
	Action    string `json:"action"`
	Target    string `json:"target,omitempty"`
	// Outcome is success, refused or error.
	Outcome       string          `json:"outcome"`
	Code          string          `json:"code,omitempty"`
	Message       string          `json:"message,omitempty"`
	Before        json.RawMessage `json:"before,omitempty"`
	After         json.RawMessage `json:"after,omitempty"`
	CorrelationID string          `json:"correlation_id,omitempty"`
}

// Stats are record counts.
type Stats struct {
	Devices          map[DeviceStatus]int
	Preregistrations int
	Certificates     int
	Revocations      int
	AuditRecords     uint64
	CRLNumber        uint64
}

// OpenImports counts, for CreateImport, the staged imports still open
// when b is created: all of them, and those of b's operator. Add each
// staged import, then Check.
type OpenImports struct{ all, operator int }

// Add counts open if it is still open when b is created.
func (o *OpenImports) Add(b, open *ImportBatch) {
	if b.CreatedAt.Before(open.ExpiresAt) {
		o.all++
		if open.Operator == b.Operator {
			o.operator++
		}
	}
}

// Check returns ErrTooManyImports or ErrOperatorImports when one more may
// not open.
func (o *OpenImports) Check(max, perOperator int) error {
	switch {
	case o.all >= max:
		return ErrTooManyImports
	case o.operator >= perOperator:
		return ErrOperatorImports
	}
	return nil
}

// OldestImports sorts open, the staged imports ListImports found open,
// oldest first (by CreatedAt, then ID) and keeps at most limit of them.
func OldestImports(open []*ImportBatch, limit int) []*ImportBatch {
	slices.SortFunc(open, func(a, b *ImportBatch) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return open[:min(len(open), max(limit, 0))]
}
