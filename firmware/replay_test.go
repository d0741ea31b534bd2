package firmware_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

func sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func TestReplayGenerated(t *testing.T) {
	for _, tc := range []struct {
		name       string
		opts       *elt.Options
		version    string
		secureBoot bool
		bootApps   [][]byte
	}{
		{
			name:       "default",
			version:    elt.DefaultFirmwareVersion,
			secureBoot: true,
			bootApps:   [][]byte{sum(elt.DefaultBootLoader), sum(elt.DefaultKernel)},
		},
		{
			name:     "secure boot off",
			opts:     &elt.Options{SecureBootDisabled: true},
			version:  elt.DefaultFirmwareVersion,
			bootApps: [][]byte{sum(elt.DefaultBootLoader), sum(elt.DefaultKernel)},
		},
		{
			name:       "SHA-1 and SHA-256 banks",
			opts:       &elt.Options{SHA1: true},
			version:    elt.DefaultFirmwareVersion,
			secureBoot: true,
			bootApps:   [][]byte{sum(elt.DefaultBootLoader), sum(elt.DefaultKernel)},
		},
		{
			name:       "other firmware and boot chain",
			opts:       &elt.Options{FirmwareVersion: "ACME GW-2 BIOS 2.7.1", BootLoader: []byte("systemd-boot"), Kernel: []byte("uki")},
			version:    "ACME GW-2 BIOS 2.7.1",
			secureBoot: true,
			bootApps:   [][]byte{sum([]byte("systemd-boot")), sum([]byte("uki"))},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := elt.New(tc.opts)
			lg, err := firmware.ParseMeasurements(l.Bytes())
			if err != nil {
				t.Fatalf("ParseMeasurements: %v", err)
			}
			if lg.Format() != firmware.FormatCryptoAgile {
				t.Errorf("format = %v, want crypto-agile", lg.Format())
			}
			m, err := lg.Replay(l.PCRs(), nil)
			if err != nil {
				t.Fatalf("Replay: %v", err)
			}
			if got := m.FirmwareVersion(); got != tc.version {
				t.Errorf("FirmwareVersion = %q, want %q", got, tc.version)
			}
			if got := m.SecureBootEnabled(); got != tc.secureBoot {
				t.Errorf("SecureBootEnabled = %v, want %v (%s)", got, tc.secureBoot, m.SecureBootDetail())
			}
			if diff := cmp.Diff(tc.bootApps, m.BootApplicationDigests()); diff != "" {
				t.Errorf("BootApplicationDigests (-want, +got):\n%s", diff)
			}
			if !bytes.Equal(m.BootLoaderDigest(), tc.bootApps[0]) {
				t.Errorf("BootLoaderDigest = %x, want %x", m.BootLoaderDigest(), tc.bootApps[0])
			}
			if n := len(m.FirmwareBlobDigests()); n != 2 {
				t.Errorf("%d firmware blob digests, want 2", n)
			}
			wantVars := firmware.SecureBootDigests{
				PK:  sum(elt.SecureBootVariable("PK")),
				KEK: sum(elt.SecureBootVariable("KEK")),
				DB:  sum(elt.SecureBootVariable("db")),
				DBX: sum(elt.SecureBootVariable("dbx")),
			}
			if diff := cmp.Diff(wantVars, m.SecureBootVariableDigests()); diff != "" {
				t.Errorf("SecureBootVariableDigests (-want, +got):\n%s", diff)
			}
			if diff := cmp.Diff(l.PCRs(), m.PCRs()); diff != "" {
				t.Errorf("PCRs (-want, +got):\n%s", diff)
			}
		})
	}
}

// TestFirmwareDigestDefinition pins the documented encoding:
// SHA-256("edgeenroll firmware digest v1\x00" || PCR0).
func TestFirmwareDigestDefinition(t *testing.T) {
	l := elt.New(nil)
	want := sha256.Sum256(append([]byte("edgeenroll firmware digest v1\x00"), l.PCRs()[0]...))
	if got := replay(t, l).FirmwareDigest(); got != hex.EncodeToString(want[:]) {
		t.Fatalf("FirmwareDigest = %s, want %x", got, want)
	}
}

// TestFirmwareDigestStability: the digest follows the firmware, not the
// boot configuration or the OS.
func TestFirmwareDigestStability(t *testing.T) {
	base := replay(t, elt.New(nil)).FirmwareDigest()
	for _, tc := range []struct {
		name string
		opts *elt.Options
		same bool
	}{
		{"same firmware, next boot", nil, true},
		{"secure boot turned off", &elt.Options{SecureBootDisabled: true}, true},
		{"new boot loader and kernel", &elt.Options{BootLoader: []byte("grub 2.12"), Kernel: []byte("linux 6.13")}, true},
		{"second bank recorded", &elt.Options{SHA1: true}, true},
		{"firmware update", &elt.Options{FirmwareVersion: "EdgeEnroll Test Firmware 1.0.1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := replay(t, elt.New(tc.opts)).FirmwareDigest()
			if (got == base) != tc.same {
				t.Fatalf("FirmwareDigest %s vs default %s: same = %v, want %v", got, base, got == base, tc.same)
			}
		})
	}

	// A changed firmware volume with the same version string is another
	// firmware too.
	l := elt.New(nil)
	i := l.Index(0, elt.EV_EFI_PLATFORM_FIRMWARE_BLOB2)
	l.Events[i].SHA256[0] ^= 1
	if replay(t, l).FirmwareDigest() == base {
		t.Fatal("a changed firmware volume kept the firmware digest")
	}
}

// withEvent returns the default log with the event at (pcr, typ) replaced.
func withEvent(pcr int, typ elt.EventType, e elt.Event) *elt.Log {
	l := elt.New(nil)
	l.Events[l.Index(pcr, typ)] = e
	return l
}

func TestFirmwareVersionEncodings(t *testing.T) {
	ucs2 := func(s string) []byte {
		var b []byte
		for _, c := range s {
			b = append(b, byte(c), 0)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"UCS-2 with terminator", ucs2("N2HET63W\x00"), "N2HET63W"},
		{"UCS-2 without terminator", ucs2("1.2.3"), "1.2.3"},
		{"ASCII", []byte("F.40 \x00"), "F.40 "},
		{"GUID", []byte{0x8f, 0x0a, 0x4b, 0x1c, 0x11, 0x02, 0x33, 0x4c, 0xa9, 0x9c, 0x00, 0xff, 0x12, 0x34, 0x56, 0x78}, "0x8f0a4b1c1102334ca99c00ff12345678"},
		{"empty UCS-2", []byte{0, 0}, ""},
		{"empty", nil, ""},
		{"too long", bytes.Repeat([]byte("A\x00"), firmware.MaxVersionSize), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := withEvent(0, elt.EV_S_CRTM_VERSION, elt.NewEvent(0, elt.EV_S_CRTM_VERSION, tc.data))
			if got := replay(t, l).FirmwareVersion(); got != tc.want {
				t.Fatalf("FirmwareVersion = %q, want %q", got, tc.want)
			}
		})
	}

	// A version whose digest is not of its data is not reported (the PCR
	// still replays: the digest is what was extended).
	e := elt.NewMeasurement(0, elt.EV_S_CRTM_VERSION, ucs2("forged 9.9\x00"), ucs2("real 1.0\x00"))
	if got := replay(t, withEvent(0, elt.EV_S_CRTM_VERSION, e)).FirmwareVersion(); got != "" {
		t.Fatalf("FirmwareVersion = %q from data the digest does not cover, want empty", got)
	}
}

// TestSecureBootUnverifiable: a PCR 7 that does not establish the
// secure-boot state counts as secure boot off, with a reason.
func TestSecureBootUnverifiable(t *testing.T) {
	sbVar := func(vendor elt.GUID, v ...byte) elt.Event {
		return elt.NewEvent(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG, elt.UEFIVariableData(vendor, "SecureBoot", v))
	}
	for _, tc := range []struct {
		name string
		edit func(l *elt.Log)
	}{
		{"SecureBoot under the wrong vendor GUID", func(l *elt.Log) {
			l.Events[l.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG)] = sbVar(elt.EFIImageSecurityDatabase, 1)
		}},
		{"SecureBoot value 2", func(l *elt.Log) {
			l.Events[l.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG)] = sbVar(elt.EFIGlobalVariable, 2)
		}},
		{"SecureBoot not measured", func(l *elt.Log) {
			l.Events = slices.Delete(l.Events, l.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG), l.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG)+1)
		}},
		{"SecureBoot measured twice", func(l *elt.Log) {
			i := l.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG)
			l.Events = slices.Insert(l.Events, i, sbVar(elt.EFIGlobalVariable, 1))
		}},
		{"variable digest not of its data", func(l *elt.Log) {
			i := l.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG)
			e := l.Events[i]
			l.Events[i] = elt.NewMeasurement(7, e.Type, e.Data, []byte("something else"))
		}},
		{"UEFI debugger present", func(l *elt.Log) {
			i := l.Index(7, elt.EV_SEPARATOR)
			l.Events = slices.Insert(l.Events, i, elt.NewEvent(7, elt.EV_EFI_ACTION, []byte("UEFI Debug Mode")))
		}},
		{"no authority for the boot loader", func(l *elt.Log) {
			i := l.Index(7, elt.EV_EFI_VARIABLE_AUTHORITY)
			l.Events = slices.Delete(l.Events, i, i+1)
		}},
		{"truncated UEFI_VARIABLE_DATA", func(l *elt.Log) {
			i := l.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG)
			l.Events[i] = elt.NewEvent(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG, l.Events[i].Data[:40])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := elt.New(nil)
			tc.edit(l)
			m := replay(t, l)
			if m.SecureBootEnabled() {
				t.Fatal("SecureBootEnabled = true")
			}
			if m.SecureBootDetail() == "" {
				t.Fatal("no SecureBootDetail")
			}
			t.Logf("detail: %s", m.SecureBootDetail())
			// Secure boot is only a policy matter: the firmware is
			// still identified.
			if m.FirmwareDigest() == "" {
				t.Fatal("no firmware digest")
			}
		})
	}
}

func TestReplayArgumentFaults(t *testing.T) {
	l := elt.New(nil)
	lg, err := firmware.ParseMeasurements(l.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	short := clonePCRs(l.PCRs())
	short[3] = short[3][:20]
	for _, tc := range []struct {
		name     string
		quoted   map[int][]byte
		required []int
	}{
		{"SHA-1 sized value", short, nil},
		{"index out of range", map[int][]byte{24: make([]byte, 32)}, nil},
		{"required out of range", l.PCRs(), []int{-1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := lg.Replay(tc.quoted, tc.required)
			if !errors.Is(err, firmware.ErrInvalidArgument) || firmware.ReasonOf(err) != 0 {
				t.Fatalf("error = %v, want ErrInvalidArgument and no verdict", err)
			}
		})
	}
	if _, err := new(firmware.Log).Replay(l.PCRs(), nil); !errors.Is(err, firmware.ErrInvalidArgument) {
		t.Fatalf("zero Log: error = %v, want ErrInvalidArgument", err)
	}
}

func TestUntrustedEvents(t *testing.T) {
	l := elt.New(nil)
	lg, err := firmware.ParseMeasurements(l.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got := lg.UntrustedEvents()
	if len(got) != len(l.Events) {
		t.Fatalf("%d events, want %d", len(got), len(l.Events))
	}
	for i, e := range got {
		w := l.Events[i]
		if e.PCR != w.PCR || uint32(e.Type) != uint32(w.Type) || !bytes.Equal(e.Data, w.Data) || !bytes.Equal(e.SHA256, w.SHA256[:]) {
			t.Fatalf("event %d = %v %v, want PCR %d %#x", i, e.PCR, e.Type, w.PCR, uint32(w.Type))
		}
	}
	if s := firmware.EV_EFI_BOOT_SERVICES_APPLICATION.String(); s != "EV_EFI_BOOT_SERVICES_APPLICATION" {
		t.Errorf("String = %q", s)
	}
	if s := firmware.EventType(0x1234).String(); s != "EventType(0x00001234)" {
		t.Errorf("String of unknown type = %q", s)
	}
}

// TestSecureBootIgnoresPCR2EventTypes: event types newer than
// go-attestation's table in PCR 2 (option ROMs, SPDM devices) do not make
// secure boot unverifiable (workaround "PCR 2 event types").
func TestSecureBootIgnoresPCR2EventTypes(t *testing.T) {
	l := elt.New(nil)
	i := l.Index(2, elt.EV_SEPARATOR)
	l.Events = slices.Insert(l.Events, i,
		elt.NewMeasurement(2, elt.EV_EFI_PLATFORM_FIRMWARE_BLOB2, []byte("\x06OptROM"), []byte("option ROM")),
		elt.NewMeasurement(2, elt.EventType(firmware.EV_EFI_SPDM_FIRMWARE_BLOB), []byte("spdm"), []byte("device firmware")))
	m := replay(t, l)
	if !m.SecureBootEnabled() {
		t.Fatalf("SecureBootEnabled = false: %s", m.SecureBootDetail())
	}
}
