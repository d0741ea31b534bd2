package firmware

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"

	goattest "github.com/google/go-attestation/attest"
)

// FirmwareDigestDomain starts the input of FirmwareDigest; its version
// changes if the encoding ever does.
const FirmwareDigestDomain = "edgeenroll firmware digest v1\x00"

// Measurements is what a replayed event log proves about a boot. Only
// Log.Replay makes one: its fields are unexported, so a value that did not
// come from Replay (a zero Measurements) is refused by Policy.Evaluate.
//
// Every value comes from events whose digests replayed to the quoted PCRs.
// Event data is used only where its digest is the digest of the data
// (EV_S_CRTM_VERSION, EV_SEPARATOR, EV_EFI_VARIABLE_DRIVER_CONFIG); where
// the digest is of something else (a firmware volume, a boot application's
// image), only the digest is reported.
type Measurements struct {
	replayed bool

	pcrs             map[int][]byte
	firmwareDigest   [sha256.Size]byte
	firmwareVersion  string
	firmwareBlobs    [][]byte
	secureBoot       bool
	secureBootDetail string
	secureBootVars   SecureBootDigests
	bootApps         [][]byte
}

// SecureBootDigests are SHA-256 digests of the contents (EFI_SIGNATURE_LIST
// data, without the variable attributes) of the secure-boot variables the
// firmware measured into PCR 7 before its separator. A nil digest means the
// variable was not measured, or the secure-boot configuration could not be
// read from the log (see Measurements.SecureBootDetail).
type SecureBootDigests struct {
	PK, KEK, DB, DBX []byte
}

func (d SecureBootDigests) clone() SecureBootDigests {
	return SecureBootDigests{PK: bytes.Clone(d.PK), KEK: bytes.Clone(d.KEK), DB: bytes.Clone(d.DB), DBX: bytes.Clone(d.DBX)}
}

// newMeasurements extracts Measurements from verified events.
func newMeasurements(events []goattest.Event, quoted map[int][]byte, replayed []int) *Measurements {
	m := &Measurements{replayed: true, pcrs: make(map[int][]byte, len(replayed))}
	for _, i := range replayed {
		m.pcrs[i] = bytes.Clone(quoted[i])
	}

	// The firmware digest: PCR 0 alone (see FirmwareDigest).
	h := sha256.New()
	h.Write([]byte(FirmwareDigestDomain))
	h.Write(m.pcrs[0])
	h.Sum(m.firmwareDigest[:0])

	versionSeen := false
	for _, e := range events {
		switch {
		case e.Index == 0 && EventType(e.Type) == EV_S_CRTM_VERSION && !versionSeen:
			versionSeen = true
			if digestBinds(e) {
				m.firmwareVersion = decodeVersion(e.Data)
			}
		case e.Index == 0 && (EventType(e.Type) == EV_EFI_PLATFORM_FIRMWARE_BLOB || EventType(e.Type) == EV_EFI_PLATFORM_FIRMWARE_BLOB2):
			m.firmwareBlobs = append(m.firmwareBlobs, bytes.Clone(e.Digest))
		case e.Index == 4 && EventType(e.Type) == EV_EFI_BOOT_SERVICES_APPLICATION:
			m.bootApps = append(m.bootApps, bytes.Clone(e.Digest))
		}
	}

	m.secureBoot, m.secureBootDetail, m.secureBootVars = secureBootState(events)
	return m
}

// secureBootState decides whether secure boot was on. Both must agree:
// go-attestation's ParseSecurebootState (PCR 7 holds only expected event
// types, every variable is measured once before the separator with a digest
// of its data, SecureBoot is 0 or 1, when on an authority event and PK, KEK
// and db are present, no UEFI debugger), and this package's stricter reading
// of the variables (strict UEFI_VARIABLE_DATA, each under its
// specification's vendor GUID). Anything unreadable counts as off, with the
// reason in detail.
func secureBootState(events []goattest.Event) (enabled bool, detail string, digests SecureBootDigests) {
	vars, err := secureBootVariables(events)
	if err != nil {
		return false, "secure boot configuration unreadable: " + err.Error(), SecureBootDigests{}
	}
	digests = SecureBootDigests{PK: vars["PK"], KEK: vars["KEK"], DB: vars["db"], DBX: vars["dbx"]}
	// Workaround "PCR 2 event types": ParseSecurebootState also walks PCR
	// 2 (for driver-source hints this package does not use) and fails on
	// event types newer than its table, such as
	// EV_EFI_PLATFORM_FIRMWARE_BLOB2 or EV_EFI_SPDM_FIRMWARE_BLOB from
	// option ROMs and SPDM devices. Only PCR 7 decides secure boot, and
	// Replay already enforced PCR 2's single separator, so it sees PCR 7
	// alone.
	pcr7 := make([]goattest.Event, 0, len(events))
	for _, e := range events {
		if e.Index == 7 {
			pcr7 = append(pcr7, e)
		}
	}
	sb, err := goattest.ParseSecurebootState(pcr7)
	switch {
	case err != nil:
		return false, "secure boot state unverifiable: " + err.Error(), digests
	case vars["SecureBoot"] == nil:
		return false, "the SecureBoot variable was not measured", digests
	case !sb.Enabled || vars["SecureBoot"][0] != 1:
		return false, "the SecureBoot variable is 0", digests
	}
	return true, "", digests
}

// secureBootVariables reads the EV_EFI_VARIABLE_DRIVER_CONFIG events of
// PCR 7 and returns the SecureBoot variable's one-byte value (key
// "SecureBoot") and SHA-256 digests of PK, KEK, db and dbx (other variables
// are ignored).
func secureBootVariables(events []goattest.Event) (map[string][]byte, error) {
	out := map[string][]byte{}
	separated := false
	for _, e := range events {
		if e.Index != 7 {
			continue
		}
		switch EventType(e.Type) {
		case EV_SEPARATOR:
			separated = true
			continue
		case EV_EFI_VARIABLE_DRIVER_CONFIG:
		default:
			continue
		}
		if separated {
			return nil, fmt.Errorf("EV_EFI_VARIABLE_DRIVER_CONFIG after the PCR 7 separator")
		}
		if !digestBinds(e) {
			return nil, fmt.Errorf("EV_EFI_VARIABLE_DRIVER_CONFIG digest is not of its data")
		}
		v, err := parseUEFIVariableData(e.Data)
		if err != nil {
			return nil, err
		}
		var want efiGUID
		switch v.name {
		case "SecureBoot", "PK", "KEK":
			want = efiGlobalVariable
		case "db", "dbx":
			want = efiImageSecurityDatabase
		default:
			continue
		}
		if v.vendor != want {
			return nil, fmt.Errorf("variable %q measured under vendor GUID %x", v.name, v.vendor)
		}
		if _, dup := out[v.name]; dup {
			return nil, fmt.Errorf("variable %q measured twice", v.name)
		}
		if v.name == "SecureBoot" {
			if len(v.data) != 1 || v.data[0] > 1 {
				return nil, fmt.Errorf("SecureBoot variable is %x, want 00 or 01", v.data)
			}
			out[v.name] = bytes.Clone(v.data)
			continue
		}
		s := sha256.Sum256(v.data)
		out[v.name] = s[:]
	}
	return out, nil
}

// FirmwareDigest identifies the platform firmware: lowercase hex of
//
//	SHA-256( FirmwareDigestDomain || PCR0 )
//
// where PCR0 is the replayed and quoted 32-byte SHA-256 value of PCR 0.
// PCR 0 is where the S-CRTM and platform firmware measure themselves
// (EV_S_CRTM_VERSION, EV_S_CRTM_CONTENTS, EV_EFI_PLATFORM_FIRMWARE_BLOB(2),
// embedded option ROMs and PI drivers, the H-CRTM/startup locality, and the
// separator), in a fixed order, so it is the same on every boot of the same
// firmware image and changes with any change to that code or its version
// string. Because PCR 0 is a hash chain over every PCR 0 event, nothing
// measured there can be left out or relabelled without changing the digest.
//
// Deliberately NOT covered, so that the digest stays stable across reboots,
// boot-order changes and OS updates: PCR 1 (platform configuration, boot
// variables, SMBIOS tables), PCR 2-3 (pluggable option ROMs), PCR 4
// (boot loader and kernel: BootApplicationDigests), PCR 5 (GPT, Exit Boot
// Services), PCR 7 (secure-boot state and keys, which change with dbx
// updates: SecureBootEnabled, SecureBootVariableDigests).
//
// Caveat: a few platforms measure data that varies by hardware
// configuration into PCR 0 (for example ACPI tables); their operators
// register one reference per configuration.
func (m *Measurements) FirmwareDigest() string {
	if m == nil || !m.replayed {
		return ""
	}
	return hex.EncodeToString(m.firmwareDigest[:])
}

// Replayed reports whether m was produced by Log.Replay.
func (m *Measurements) Replayed() bool { return m != nil && m.replayed }

// PCRs returns the SHA-256 values of the PCRs the log was replayed against
// (0-7, the required PCRs and every PCR the log measures), a fresh map.
func (m *Measurements) PCRs() map[int][]byte {
	out := maps.Clone(m.pcrs)
	for i, d := range out {
		out[i] = bytes.Clone(d)
	}
	return out
}

// FirmwareVersion returns the S-CRTM version string of the first
// EV_S_CRTM_VERSION event in PCR 0 (see decodeVersion for the encodings
// accepted: UCS-2 or ASCII text, otherwise "0x" and hex), or "" if there is
// none, its digest is not of its data, or it is empty. It is covered by
// FirmwareDigest; use it to show operators, and FirmwareDigest to decide.
//
// The firmware vendor is not in the log in a verifiable form (a vendor
// appears only in unmeasured or pointer-only events), so there is no
// FirmwareVendor: operators name the firmware in their Reference.
func (m *Measurements) FirmwareVersion() string { return m.firmwareVersion }

// FirmwareBlobDigests returns the SHA-256 digests of the firmware volumes
// measured into PCR 0 (EV_EFI_PLATFORM_FIRMWARE_BLOB and _BLOB2), in log
// order. The blobs' descriptions are not covered by the digests and are not
// reported.
func (m *Measurements) FirmwareBlobDigests() [][]byte { return cloneAll(m.firmwareBlobs) }

// SecureBootEnabled reports whether the log shows UEFI secure boot on: the
// SecureBoot variable measured as 1 and a well-formed PCR 7 (see
// SecureBootDetail when it is false).
func (m *Measurements) SecureBootEnabled() bool { return m.secureBoot }

// SecureBootDetail says why SecureBootEnabled is false ("" when true).
func (m *Measurements) SecureBootDetail() string { return m.secureBootDetail }

// SecureBootVariableDigests returns digests of the PK, KEK, db and dbx
// contents measured into PCR 7.
func (m *Measurements) SecureBootVariableDigests() SecureBootDigests {
	return m.secureBootVars.clone()
}

// BootApplicationDigests returns the digests (PE/COFF Authenticode SHA-256)
// of the EV_EFI_BOOT_SERVICES_APPLICATION events in PCR 4, in log order:
// the first is the boot loader the firmware started from the boot option
// (shim, systemd-boot, GRUB); later ones are images loaded through the
// firmware's LoadImage (a second-stage loader, a kernel with an EFI stub).
// They are not part of FirmwareDigest.
func (m *Measurements) BootApplicationDigests() [][]byte { return cloneAll(m.bootApps) }

// BootLoaderDigest returns the first boot application's digest, or nil.
func (m *Measurements) BootLoaderDigest() []byte {
	if len(m.bootApps) == 0 {
		return nil
	}
	return bytes.Clone(m.bootApps[0])
}

func cloneAll(in [][]byte) [][]byte {
	if in == nil {
		return nil
	}
	out := make([][]byte, len(in))
	for i, b := range in {
		out[i] = bytes.Clone(b)
	}
	return out
}
