package store

import (
	"context"
	"time"
)

// FirmwareStore is the part of Store that measured boot uses: the
// approved firmware references of each group. A reference is never
// deleted: retiring it keeps the record (RetiredAt) so the history of what
// was approved stays readable. Every change is written with its audit
// records in one transaction.
type FirmwareStore interface {
	// UpdateFirmware runs plan with every reference of group (retired
	// ones included, in digest order; empty if none) and writes, in one
	// transaction, the references plan returns (each replaces the
	// record of its digest, or is new) and its audit records. An error
	// from plan writes nothing and is returned as is.
	UpdateFirmware(ctx context.Context, group string, plan func(current []*FirmwareReference) (*FirmwarePlan, error)) error
	// FirmwareReference returns the reference of digest in group,
	// retired or not, or ErrNotFound. Enrollment reads the one reference
	// a measured digest could match, whatever the size of the group.
	FirmwareReference(ctx context.Context, group, digest string) (*FirmwareReference, error)
	// FirmwareReferences calls fn for each reference of group (of every
	// group if group is "") that sorts after the key after (the zero
	// FirmwareKey: from the start), in (group, digest) order, until fn
	// returns false.
	FirmwareReferences(ctx context.Context, group string, after FirmwareKey, fn func(*FirmwareReference) bool) error
}

// FirmwareKey orders firmware references: by group, then digest.
type FirmwareKey struct {
	Group, Digest string
}

// FirmwarePlan is what UpdateFirmware writes.
type FirmwarePlan struct {
	Put   []*FirmwareReference
	Audit []*AuditRecord
}

// FirmwareReference approves one firmware digest for a group.
type FirmwareReference struct {
	Group string `json:"group"`
	// Digest is the firmware digest (firmware.Measurements.FirmwareDigest,
	// lowercase hex).
	Digest       string    `json:"digest"`
	Name         string    `json:"name"`
	Version      string    `json:"version,omitempty"`
	SourceDevice string    `json:"source_device,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	CreatedBy    string    `json:"created_by"`
	// RetiredAt, RetiredBy and RetireReason are set once retired; a
	// retired reference approves nothing.
	RetiredAt    time.Time `json:"retired_at,omitzero"`
	RetiredBy    string    `json:"retired_by,omitempty"`
	RetireReason string    `json:"retire_reason,omitempty"`
}

// Active reports whether r approves its firmware.
func (r *FirmwareReference) Active() bool { return r.RetiredAt.IsZero() }

// FirmwareMeasurement is a device's last measured boot as the server
// judged it (see api.MeasuredFirmware, which shows it).
type FirmwareMeasurement struct {
	// Digest, Version, SecureBoot, SecureBootDetail and BootLoaderDigest
	// come from a log that replayed to the quoted PCRs; they are empty
	// when it did not.
	Digest           string `json:"digest,omitempty"`
	Version          string `json:"version,omitempty"`
	SecureBoot       bool   `json:"secure_boot,omitempty"`
	SecureBootDetail string `json:"secure_boot_detail,omitempty"`
	BootLoaderDigest string `json:"boot_loader_digest,omitempty"`
	// Verdict is "approved", "refused" or "not_enforced"; Code the wire
	// code of the refusal (or of the refusal enforcement would give) and
	// Reason its message.
	Verdict    string    `json:"verdict"`
	Code       string    `json:"code,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Reference  string    `json:"reference,omitempty"`
	MeasuredAt time.Time `json:"measured_at"`
	Renewal    bool      `json:"renewal,omitempty"`
	// SessionID and CorrelationID name the enrollment that measured it.
	SessionID     string `json:"session_id,omitempty"`
	CorrelationID string `json:"correlation_id,omitempty"`
}
