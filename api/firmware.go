package api

import (
	"fmt"
	"strings"
	"time"
)

// Measured boot: what the admin API says about a group's firmware policy,
// its approved firmware references and a device's last measured firmware.

// Measured-boot policies of a group (GroupSpec.MeasuredBoot).
const (
	// MeasuredBootOff (the default) admits devices whatever their event
	// log says. A log that is sent is still replayed and judged, and the
	// result recorded on the device (verdict not_enforced), so operators
	// can learn approved firmware before they enforce.
	MeasuredBootOff = "off"
	// MeasuredBootEnforce refuses enrollment and every renewal unless the
	// device sends a TCG event log that replays to its quoted PCRs, its
	// firmware digest is an approved reference of the group and, if the
	// group requires it, secure boot is on.
	MeasuredBootEnforce = "enforce"
)

// Verdicts of a firmware measurement (MeasuredFirmware.Verdict).
const (
	// FirmwareApproved: the group enforces measured boot and the boot
	// passed.
	FirmwareApproved = "approved"
	// FirmwareRefused: the group enforces measured boot and the boot
	// failed; Code says why.
	FirmwareRefused = "refused"
	// FirmwareNotEnforced: the group does not enforce measured boot; Code
	// is what enforcement would have answered ("" if it would pass).
	FirmwareNotEnforced = "not_enforced"
)

// PathAdminFirmware lists (GET, query group, retired=true, after, limit)
// and adds (POST FirmwareAddRequest) approved firmware references;
// PathAdminFirmwareRetire retires them (POST FirmwareRetireRequest).
const (
	PathAdminFirmware       = "/v1/admin/firmware"
	PathAdminFirmwareRetire = "/v1/admin/firmware/retire"
)

// MeasuredFirmware is the last measured boot of a device, as the server
// judged it at its last finish that carried (or, under enforcement, lacked)
// an event log. It is recorded whether the enrollment succeeded or not.
type MeasuredFirmware struct {
	// Digest is the firmware digest (hex SHA-256 over PCR 0, see
	// firmware.Measurements.FirmwareDigest) of a log that replayed to the
	// quoted PCRs; empty when the log did not replay (then nothing in it
	// is trustworthy).
	Digest string `json:"digest,omitempty"`
	// Version is the S-CRTM version string the replayed log measured
	// (informational: Digest decides).
	Version string `json:"version,omitempty"`
	// SecureBoot reports whether the replayed log shows UEFI secure boot
	// on; SecureBootDetail says why not.
	SecureBoot       bool   `json:"secure_boot"`
	SecureBootDetail string `json:"secure_boot_detail,omitempty"`
	// BootLoaderDigest is the first boot application's digest (hex).
	BootLoaderDigest string `json:"boot_loader_digest,omitempty"`
	// Verdict is FirmwareApproved, FirmwareRefused or FirmwareNotEnforced.
	Verdict string `json:"verdict"`
	// Code is the refusal code (firmware_not_approved,
	// secure_boot_disabled, event_log_mismatch, pcr_not_quoted), or "".
	Code Code `json:"code,omitempty"`
	// Reason says what failed, for an operator.
	Reason string `json:"reason,omitempty"`
	// Reference is the name of the approved reference the digest matched.
	Reference  string    `json:"reference,omitempty"`
	MeasuredAt time.Time `json:"measured_at"`
	// Renewal: the device held an unexpired certificate when it began.
	Renewal bool `json:"renewal,omitempty"`
}

// FirmwareReference is one approved firmware of a group. Retired
// references are kept for the record and approve nothing.
type FirmwareReference struct {
	Group string `json:"group"`
	// Digest is the firmware digest it approves (64 lowercase hex).
	Digest string `json:"digest"`
	Name   string `json:"name"`
	// Version is the firmware version a golden device measured, if the
	// reference was learnt from one.
	Version string `json:"version,omitempty"`
	// SourceDevice is the golden device it was learnt from, if any.
	SourceDevice string    `json:"source_device,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	CreatedBy    string    `json:"created_by"`
	RetiredAt    time.Time `json:"retired_at,omitzero"`
	RetiredBy    string    `json:"retired_by,omitempty"`
	RetireReason string    `json:"retire_reason,omitempty"`
}

// FirmwareDigest names one firmware digest to approve.
type FirmwareDigest struct {
	Digest string `json:"digest"`
	Name   string `json:"name"`
}

// FirmwareAddRequest approves firmware for a group: either the last
// measured firmware of a golden device (FromDevice, optionally Name), or
// listed digests (References), all or nothing. Re-adding an active digest
// is a no-op (or renames it), re-adding a retired one reactivates it.
type FirmwareAddRequest struct {
	Group      string           `json:"group"`
	FromDevice string           `json:"from_device,omitempty"`
	Name       string           `json:"name,omitempty"`
	References []FirmwareDigest `json:"references,omitempty"`
	Comment    string           `json:"comment,omitempty"`
}

// Validate checks the request's shape; the server checks it against the
// stored references.
func (r *FirmwareAddRequest) Validate() error {
	if err := ValidateGroupName(r.Group); err != nil {
		return err
	}
	if err := reasonText("comment", r.Comment); err != nil {
		return err
	}
	switch {
	case (r.FromDevice == "") == (len(r.References) == 0):
		return Errorf(CodeBadRequest, "name either a golden device (from_device) or digests (references)")
	case r.FromDevice != "":
		if !ValidDeviceID(r.FromDevice) {
			return Errorf(CodeBadRequest, "from_device %.80q must be 64 lowercase hex characters", r.FromDevice)
		}
		if r.Name != "" {
			return ValidateFirmwareName("name", r.Name)
		}
		return nil
	}
	if r.Name != "" {
		return Errorf(CodeBadRequest, "name applies to from_device; each reference carries its own")
	}
	if len(r.References) > MaxFirmwareReferences {
		return Errorf(CodeBadRequest, "%d references, limit is %d", len(r.References), MaxFirmwareReferences)
	}
	digests := make(map[string]int, len(r.References))
	names := make(map[string]int, len(r.References))
	for i, ref := range r.References {
		if !ValidFirmwareDigest(ref.Digest) {
			return Errorf(CodeBadRequest, "references[%d].digest %.80q must be 64 lowercase hex characters (the firmware digest `enrollctl devices get` shows)", i, ref.Digest)
		}
		if err := ValidateFirmwareName(fmt.Sprintf("references[%d].name", i), ref.Name); err != nil {
			return err
		}
		if j, dup := digests[ref.Digest]; dup {
			return Errorf(CodeBadRequest, "references[%d] repeats the digest of references[%d]", i, j)
		}
		if j, dup := names[ref.Name]; dup {
			return Errorf(CodeBadRequest, "references[%d] repeats the name of references[%d]", i, j)
		}
		digests[ref.Digest], names[ref.Name] = i, i
	}
	return nil
}

// FirmwareAddResponse reports what an add did.
type FirmwareAddResponse struct {
	Group       string `json:"group"`
	Added       int    `json:"added"`
	Reactivated int    `json:"reactivated"`
	Renamed     int    `json:"renamed"`
	Unchanged   int    `json:"unchanged"`
	// References are the group's references the request named, as
	// stored now.
	References []FirmwareReference `json:"references"`
}

// FirmwareRetireRequest retires approved references of a group, all or
// nothing: devices that measure them are refused from their next
// enrollment or renewal on.
type FirmwareRetireRequest struct {
	Group   string   `json:"group"`
	Digests []string `json:"digests"`
	Reason  string   `json:"reason,omitempty"`
}

// Validate checks the request's shape.
func (r *FirmwareRetireRequest) Validate() error {
	if err := ValidateGroupName(r.Group); err != nil {
		return err
	}
	if len(r.Digests) == 0 || len(r.Digests) > MaxFirmwareReferences {
		return Errorf(CodeBadRequest, "digests must list 1 to %d firmware digests, got %d", MaxFirmwareReferences, len(r.Digests))
	}
	seen := make(map[string]bool, len(r.Digests))
	for i, d := range r.Digests {
		if !ValidFirmwareDigest(d) {
			return Errorf(CodeBadRequest, "digests[%d] %.80q must be 64 lowercase hex characters", i, d)
		}
		if seen[d] {
			return Errorf(CodeBadRequest, "digests[%d] repeats %s", i, d)
		}
		seen[d] = true
	}
	return reasonText("reason", r.Reason)
}

// FirmwareRetireResponse reports what a retire did.
type FirmwareRetireResponse struct {
	Group     string `json:"group"`
	Retired   int    `json:"retired"`
	Unchanged int    `json:"unchanged"`
	// Active counts the group's references still approving firmware.
	Active int `json:"active"`
}

// FirmwareList answers GET PathAdminFirmware, in (group, digest) order.
type FirmwareList struct {
	References    []FirmwareReference `json:"references"`
	NextPageToken string              `json:"next_page_token,omitempty"`
}

// ValidFirmwareDigest reports whether d has the form of a firmware digest:
// 64 lowercase hex characters.
func ValidFirmwareDigest(d string) bool { return ValidDeviceID(d) }

// ValidateFirmwareName accepts a reference name of 1..MaxFirmwareNameLen
// bytes of text without control characters.
func ValidateFirmwareName(field, name string) error {
	if strings.TrimSpace(name) == "" || len(name) > MaxFirmwareNameLen {
		return Errorf(CodeBadRequest, "%s must be 1 to %d bytes of text", field, MaxFirmwareNameLen)
	}
	return text(field, name)
}

// validateMeasuredBoot checks the measured-boot part of a group spec.
func validateMeasuredBoot(g *GroupSpec) error {
	switch g.MeasuredBoot {
	case "", MeasuredBootOff, MeasuredBootEnforce:
	default:
		return Errorf(CodeBadRequest, "measured_boot %.40q must be off or enforce", g.MeasuredBoot)
	}
	return pcrIndexes("required_pcrs", g.RequiredPCRs)
}
