package firmware

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Reference is one approved firmware: what an operator registers after
// checking a known-good device (NewReference) or from the vendor's
// published PCR 0 value.
type Reference struct {
	// Name identifies the reference to operators ("acme-gw-2 fw 1.4.2").
	Name string `json:"name"`
	// FirmwareDigest is Measurements.FirmwareDigest of the approved
	// firmware: 64 hex characters.
	FirmwareDigest string `json:"firmware_digest"`
}

// NewReference makes a Reference that approves the firmware m measured.
func NewReference(name string, m *Measurements) (Reference, error) {
	if !m.Replayed() {
		return Reference{}, ErrNotReplayed
	}
	r := Reference{Name: name, FirmwareDigest: m.FirmwareDigest()}
	if err := r.validate(); err != nil {
		return Reference{}, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	return r, nil
}

func (r Reference) validate() error {
	var errs []error
	if r.Name == "" || len(r.Name) > MaxReferenceNameSize {
		errs = append(errs, fmt.Errorf("reference name of %d bytes, want 1..%d", len(r.Name), MaxReferenceNameSize))
	}
	if d, err := hex.DecodeString(r.FirmwareDigest); err != nil || len(d) != 32 {
		errs = append(errs, fmt.Errorf("reference %q: firmware digest %q is not 64 hex characters", r.Name, r.FirmwareDigest))
	}
	return errors.Join(errs...)
}

// Policy is a group's firmware policy. The zero Policy approves nothing:
// every device fails with ReasonFirmwareNotApproved.
type Policy struct {
	// Approved lists the firmware the group accepts.
	Approved []Reference `json:"approved"`
	// RequireSecureBoot refuses devices whose log does not show UEFI
	// secure boot on.
	RequireSecureBoot bool `json:"require_secure_boot"`
	// RequiredPCRs are PCRs, besides the firmware PCRs 0-7, that devices
	// must quote and the log must account for. Pass them to Log.Replay.
	RequiredPCRs []int `json:"required_pcrs,omitempty"`
}

// Validate reports every problem with the policy at once (joined, and
// wrapping ErrInvalidPolicy), or nil: reference names present, unique and at
// most MaxReferenceNameSize bytes, digests of 64 hex characters, at most
// MaxReferences references, required PCRs in 0..MaxPCRs-1 without repeats.
func (p Policy) Validate() error {
	var errs []error
	if len(p.Approved) > MaxReferences {
		errs = append(errs, fmt.Errorf("%d approved references, at most %d", len(p.Approved), MaxReferences))
	}
	names := make(map[string]bool, len(p.Approved))
	for _, r := range p.Approved {
		if err := r.validate(); err != nil {
			errs = append(errs, err)
		}
		if names[r.Name] {
			errs = append(errs, fmt.Errorf("reference name %q used twice", r.Name))
		}
		names[r.Name] = true
	}
	seen := make(map[int]bool, len(p.RequiredPCRs))
	for _, i := range p.RequiredPCRs {
		if i < 0 || i >= MaxPCRs {
			errs = append(errs, fmt.Errorf("required PCR %d out of range 0..%d", i, MaxPCRs-1))
		}
		if seen[i] {
			errs = append(errs, fmt.Errorf("required PCR %d listed twice", i))
		}
		seen[i] = true
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidPolicy, errors.Join(errs...))
	}
	return nil
}

// Evaluate decides whether the measured boot m is acceptable:
//
//  1. m came from Log.Replay (otherwise ErrNotReplayed) and the policy is
//     valid (otherwise Validate's error): faults, not verdicts.
//  2. Every PCR in RequiredPCRs was replayed, that is, Replay was given
//     them as required or the log measures them (ReasonPCRNotQuoted).
//  3. m's FirmwareDigest equals an approved reference's
//     (ReasonFirmwareNotApproved; an empty Approved list approves nothing).
//  4. If RequireSecureBoot, m shows secure boot on
//     (ReasonSecureBootDisabled).
//
// A refusal is a *PolicyError. Evaluate does NOT look at boot loader or
// kernel digests, nor at the secure-boot keys: callers that pin those
// compare BootApplicationDigests and SecureBootVariableDigests themselves.
func (p Policy) Evaluate(m *Measurements) error {
	_, err := p.Match(m)
	return err
}

// Match is Evaluate that also returns the approved reference m matched.
func (p Policy) Match(m *Measurements) (Reference, error) {
	// Step 1: inputs.
	if !m.Replayed() {
		return Reference{}, ErrNotReplayed
	}
	if err := p.Validate(); err != nil {
		return Reference{}, err
	}

	// Step 2: PCR coverage.
	var missing []int
	for _, i := range p.RequiredPCRs {
		if _, ok := m.pcrs[i]; !ok {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		return Reference{}, policyErr(ReasonPCRNotQuoted, "required PCRs %v were not replayed (pass Policy.RequiredPCRs to Log.Replay)", missing)
	}

	// Step 3: approved firmware.
	got := m.FirmwareDigest()
	var match *Reference
	for i, r := range p.Approved {
		if strings.EqualFold(r.FirmwareDigest, got) {
			match = &p.Approved[i]
			break
		}
	}
	if match == nil {
		v := m.FirmwareVersion()
		if v == "" {
			v = "unknown"
		}
		return Reference{}, policyErr(ReasonFirmwareNotApproved, "firmware digest %s (version %q) matches none of %d approved references", got, v, len(p.Approved))
	}

	// Step 4: secure boot.
	if p.RequireSecureBoot && !m.SecureBootEnabled() {
		return Reference{}, policyErr(ReasonSecureBootDisabled, "secure boot is required: %s", m.SecureBootDetail())
	}
	return *match, nil
}
