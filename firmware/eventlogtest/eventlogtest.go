package eventlogtest

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// EventType is a TCG event type (PFP 1.05, "Event Types").
// The generator keeps its own copy of the spec values, independent of the
// code under test.
type EventType uint32

// Event types the generator writes, named as in the PFP specification.
const (
	EV_NO_ACTION                     EventType = 0x00000003
	EV_SEPARATOR                     EventType = 0x00000004
	EV_S_CRTM_VERSION                EventType = 0x00000008
	EV_IPL                           EventType = 0x0000000D
	EV_EFI_VARIABLE_DRIVER_CONFIG    EventType = 0x80000001
	EV_EFI_VARIABLE_BOOT             EventType = 0x80000002
	EV_EFI_BOOT_SERVICES_APPLICATION EventType = 0x80000003
	EV_EFI_BOOT_SERVICES_DRIVER      EventType = 0x80000004
	EV_EFI_ACTION                    EventType = 0x80000007
	EV_EFI_PLATFORM_FIRMWARE_BLOB    EventType = 0x80000008
	EV_EFI_PLATFORM_FIRMWARE_BLOB2   EventType = 0x8000000A
	EV_EFI_VARIABLE_AUTHORITY        EventType = 0x800000E0
)

// TPM_ALG_ID values of the two banks the generator can write (TPM 2.0
// Part 2, TPM_ALG_ID).
const (
	algSHA1   = 0x0004
	algSHA256 = 0x000B
)

// EFI action strings (PFP 1.05, "EV_EFI_ACTION Event Types").
const (
	ActionCallingEFIApplication = "Calling EFI Application from Boot Option"
	ActionExitBootServices      = "Exit Boot Services Invocation"
	ActionExitBootServicesOK    = "Exit Boot Services Returned with Success"
)

// Defaults of Options.
const (
	DefaultFirmwareVersion = "EdgeEnroll Test Firmware 1.0.0"
)

var (
	// DefaultBootLoader is the image measured as the boot loader.
	DefaultBootLoader = []byte("edgeenroll test boot loader (shimx64.efi) v15.8")
	// DefaultKernel is the image measured as the kernel.
	DefaultKernel = []byte("edgeenroll test kernel (vmlinuz-6.12.0) EFI stub")
)

// Options select what the generated boot looks like. The zero value (or
// nil) is the default platform: DefaultFirmwareVersion, secure boot on,
// DefaultBootLoader and DefaultKernel, SHA-256 digests only.
type Options struct {
	// FirmwareVersion is the S-CRTM version string. The firmware volumes'
	// contents derive from it too, so a new version changes every PCR 0
	// measurement, as a firmware update does.
	FirmwareVersion string
	// SecureBootDisabled sets the SecureBoot variable to 0 and leaves out
	// the EV_EFI_VARIABLE_AUTHORITY event (the platform keys stay
	// enrolled, as when a user turns secure boot off in setup).
	SecureBootDisabled bool
	// BootLoader and Kernel are the images of the two boot services
	// applications; nil means the defaults.
	BootLoader []byte
	Kernel     []byte
	// SHA1 also records SHA-1 digests (a log of a TPM with both banks
	// active; the Spec ID event then lists SHA-1 and SHA-256).
	SHA1 bool

	// Size knobs, for logs as long as a real machine's (see Realistic).
	// All zero (the default) leaves them out.

	// BootOptions adds that many Boot#### variables after Boot0001
	// (EV_EFI_VARIABLE_BOOT, PCR 1), as firmware with many boot entries
	// measures.
	BootOptions int
	// OptionROMs adds that many EV_EFI_BOOT_SERVICES_DRIVER events on
	// PCR 2: the UEFI drivers of plug-in cards' option ROMs.
	OptionROMs int
	// GRUBCommands and GRUBFiles add a shim + GRUB second stage after the
	// boot loader: shim measures MokList, MokListX and MokSBState
	// (EV_IPL, PCR 14), then GRUB measures each command line it runs
	// (EV_IPL "grub_cmd: ...", PCR 8) and each file it reads (EV_IPL, PCR
	// 9: modules, its config, the kernel and the initrd). Real logs of a
	// GRUB boot have hundreds of these.
	GRUBCommands int
	GRUBFiles    int
}

// Realistic returns the options of a log the size of a typical x86 server's
// with shim and GRUB: 301 events over PCRs 0-9 and 14 (the default log's
// 24, plus 8 boot options, 6 option ROM drivers, 3 shim events, 200 GRUB
// commands and 60 GRUB files), about 30 KiB. Quoting it needs PCRs 8, 9
// and 14 besides 0-7.
func Realistic() *Options {
	return &Options{BootOptions: 8, OptionROMs: 6, GRUBCommands: 200, GRUBFiles: 60}
}

// Event is one measurement: a TCG_PCR_EVENT2 (PFP 1.05, "Event Logging")
// with its digests in both banks. Only the digests of the log's banks are
// written; the others are kept so the same Log can be written in either
// format.
type Event struct {
	PCR    int
	Type   EventType
	Data   []byte
	SHA1   [20]byte
	SHA256 [32]byte
}

// NewEvent makes an event whose digests are of its data, as for
// EV_SEPARATOR, EV_EFI_ACTION, EV_S_CRTM_VERSION and
// EV_EFI_VARIABLE_DRIVER_CONFIG.
func NewEvent(pcr int, typ EventType, data []byte) Event {
	return NewMeasurement(pcr, typ, data, data)
}

// NewMeasurement makes an event whose digests are of measured rather than
// of its data, as for a firmware blob or a boot application (the data
// describes where the measured bytes were).
func NewMeasurement(pcr int, typ EventType, data, measured []byte) Event {
	return Event{
		PCR:    pcr,
		Type:   typ,
		Data:   bytes.Clone(data),
		SHA1:   sha1.Sum(measured),
		SHA256: sha256.Sum256(measured),
	}
}

// Log is an event log under construction. Events are in log order; tests
// may edit them before encoding.
type Log struct {
	Events []Event
	// SHA1 records SHA-1 digests as well as SHA-256 in the crypto-agile
	// encoding.
	SHA1 bool
}

// New builds the log of one boot of the default platform, changed by opts
// (nil means defaults). See the package documentation for its events.
func New(opts *Options) *Log {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.FirmwareVersion == "" {
		o.FirmwareVersion = DefaultFirmwareVersion
	}
	if o.BootLoader == nil {
		o.BootLoader = DefaultBootLoader
	}
	if o.Kernel == nil {
		o.Kernel = DefaultKernel
	}
	keys := secureBootKeys()
	l := &Log{SHA1: o.SHA1}
	add := func(e Event) { l.Events = append(l.Events, e) }

	// PCR 0: the S-CRTM version (a NUL-terminated UCS-2 string, as EDK2
	// measures PcdFirmwareVersionString) and the firmware volumes.
	add(NewEvent(0, EV_S_CRTM_VERSION, ucs2(o.FirmwareVersion, true)))
	base := uint64(0xFF840000)
	for _, fv := range []string{"PEIFV", "DXEFV"} {
		contents := firmwareVolume(o.FirmwareVersion, fv)
		add(NewMeasurement(0, EV_EFI_PLATFORM_FIRMWARE_BLOB2, platformFirmwareBlob2(fv, base, uint64(len(contents))), contents))
		base += 0x100000
	}

	// PCR 7: secure-boot configuration, closed by its separator.
	sb := byte(1)
	if o.SecureBootDisabled {
		sb = 0
	}
	add(NewEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, UEFIVariableData(EFIGlobalVariable, "SecureBoot", []byte{sb})))
	add(NewEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, UEFIVariableData(EFIGlobalVariable, "PK", x509SignatureList(keys.pk))))
	add(NewEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, UEFIVariableData(EFIGlobalVariable, "KEK", x509SignatureList(keys.kek))))
	add(NewEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, UEFIVariableData(EFIImageSecurityDatabase, "db", x509SignatureList(keys.db))))
	add(NewEvent(7, EV_EFI_VARIABLE_DRIVER_CONFIG, UEFIVariableData(EFIImageSecurityDatabase, "dbx", sha256SignatureList(revokedImageHashes()))))
	add(separator(7))

	// PCR 1: boot variables. EDK2 measures EV_EFI_VARIABLE_BOOT with the
	// digest of the variable's contents alone (not of UEFI_VARIABLE_DATA).
	bootOrder := []byte{0x01, 0x00}
	add(NewMeasurement(1, EV_EFI_VARIABLE_BOOT, UEFIVariableData(EFIGlobalVariable, "BootOrder", bootOrder), bootOrder))
	boot0001 := loadOption("edgeenroll", `\EFI\BOOT\BOOTX64.EFI`)
	add(NewMeasurement(1, EV_EFI_VARIABLE_BOOT, UEFIVariableData(EFIGlobalVariable, "Boot0001", boot0001), boot0001))
	for i := range o.BootOptions {
		opt := loadOption(fmt.Sprintf("edgeenroll network boot %d", i), fmt.Sprintf(`\EFI\NET\PXE%04X.EFI`, i))
		add(NewMeasurement(1, EV_EFI_VARIABLE_BOOT, UEFIVariableData(EFIGlobalVariable, fmt.Sprintf("Boot%04X", i+2), opt), opt))
	}

	// PCR 2: drivers from option ROMs of plug-in cards.
	for i := range o.OptionROMs {
		rom := fmt.Appendf(nil, "edgeenroll test option ROM %d driver image", i)
		add(NewMeasurement(2, EV_EFI_BOOT_SERVICES_DRIVER, imageLoadEvent(0x7A000000+uint64(i)<<20, uint64(len(rom)), fmt.Sprintf(`\PciRoot(0x0)\Pci(0x%x,0x0)\OptionRom`, i+1)), rom))
	}

	// ReadyToBoot: the first boot option is about to run.
	add(NewEvent(4, EV_EFI_ACTION, []byte(ActionCallingEFIApplication)))
	for pcr := 0; pcr <= 6; pcr++ {
		add(separator(pcr))
	}

	// The boot loader, verified against db when secure boot is on.
	if !o.SecureBootDisabled {
		add(NewEvent(7, EV_EFI_VARIABLE_AUTHORITY, UEFIVariableData(EFIImageSecurityDatabase, "db", signatureData(keys.db))))
	}
	add(NewMeasurement(4, EV_EFI_BOOT_SERVICES_APPLICATION, imageLoadEvent(0x7E000000, uint64(len(o.BootLoader)), `\EFI\BOOT\BOOTX64.EFI`), o.BootLoader))
	add(NewMeasurement(4, EV_EFI_BOOT_SERVICES_APPLICATION, imageLoadEvent(0x7C000000, uint64(len(o.Kernel)), `\vmlinuz`), o.Kernel))

	// shim and GRUB, measuring through the firmware's TCG2 protocol.
	if o.GRUBCommands > 0 || o.GRUBFiles > 0 {
		for _, v := range []string{"MokList", "MokListX", "MokSBState"} {
			add(NewEvent(14, EV_IPL, append([]byte(v), 0)))
		}
		for i := range o.GRUBCommands {
			add(NewEvent(8, EV_IPL, append(fmt.Appendf(nil, "grub_cmd: set edgeenroll_var_%d=value_%d", i, i), 0)))
		}
		for i := range o.GRUBFiles {
			path := fmt.Sprintf("/boot/grub/x86_64-efi/module_%d.mod", i)
			add(NewMeasurement(9, EV_IPL, append([]byte(path), 0), []byte("contents of "+path)))
		}
	}

	// The OS takes over.
	add(NewEvent(5, EV_EFI_ACTION, []byte(ActionExitBootServices)))
	add(NewEvent(5, EV_EFI_ACTION, []byte(ActionExitBootServicesOK)))
	return l
}

// Clone returns a deep copy of l.
func (l *Log) Clone() *Log {
	c := &Log{SHA1: l.SHA1, Events: make([]Event, len(l.Events))}
	for i, e := range l.Events {
		e.Data = bytes.Clone(e.Data)
		c.Events[i] = e
	}
	return c
}

// Index returns the position of the first event of type typ on pcr, or -1.
func (l *Log) Index(pcr int, typ EventType) int {
	return slices.IndexFunc(l.Events, func(e Event) bool { return e.PCR == pcr && e.Type == typ })
}

// Bytes encodes l in the crypto-agile format: the Spec ID Event03 header as
// a TCG_PCR_EVENT, then each event as a TCG_PCR_EVENT2 carrying the SHA-256
// digest (and the SHA-1 digest first, when l.SHA1 is set).
func (l *Log) Bytes() []byte {
	var b bytes.Buffer
	writeEvent1(&b, 0, EV_NO_ACTION, [20]byte{}, l.specIDEvent())
	for _, e := range l.Events {
		le32(&b, uint32(e.PCR))
		le32(&b, uint32(e.Type))
		if l.SHA1 {
			le32(&b, 2)
			le16(&b, algSHA1)
			b.Write(e.SHA1[:])
		} else {
			le32(&b, 1)
		}
		le16(&b, algSHA256)
		b.Write(e.SHA256[:])
		le32(&b, uint32(len(e.Data)))
		b.Write(e.Data)
	}
	return b.Bytes()
}

// LegacyBytes encodes l in the SHA-1 format of TPM 1.2-era firmware: one
// TCG_PCR_EVENT per event, SHA-1 digests only, no Spec ID header. Such a log
// cannot be replayed against a SHA-256 PCR bank.
func (l *Log) LegacyBytes() []byte {
	var b bytes.Buffer
	for _, e := range l.Events {
		writeEvent1(&b, uint32(e.PCR), e.Type, e.SHA1, e.Data)
	}
	return b.Bytes()
}

// specIDEvent is TCG_EfiSpecIDEvent (PFP 1.05, "Event Logging"): "Spec ID
// Event03", platform class 0 (client), spec version 2.0 errata 2, UINTN of
// 8 bytes, the digest sizes of the banks in the log, no vendor info.
func (l *Log) specIDEvent() []byte {
	var b bytes.Buffer
	b.WriteString("Spec ID Event03\x00")
	le32(&b, 0)    // platformClass
	b.WriteByte(0) // specVersionMinor
	b.WriteByte(2) // specVersionMajor
	b.WriteByte(2) // specErrata
	b.WriteByte(2) // uintnSize: UINT64
	if l.SHA1 {
		le32(&b, 2)
		le16(&b, algSHA1)
		le16(&b, sha1.Size)
	} else {
		le32(&b, 1)
	}
	le16(&b, algSHA256)
	le16(&b, sha256.Size)
	b.WriteByte(0) // vendorInfoSize
	return b.Bytes()
}

// writeEvent1 writes a TCG_PCR_EVENT (the SHA-1 format).
func writeEvent1(b *bytes.Buffer, pcr uint32, typ EventType, digest [20]byte, data []byte) {
	le32(b, pcr)
	le32(b, uint32(typ))
	b.Write(digest[:])
	le32(b, uint32(len(data)))
	b.Write(data)
}

// Extend is one TPM2_PCR_Extend of the SHA-256 bank.
type Extend struct {
	PCR    int
	Digest [32]byte
}

// Extends lists, in log order, the SHA-256 extends the events describe
// (EV_NO_ACTION events extend nothing).
func (l *Log) Extends() []Extend {
	var out []Extend
	for _, e := range l.Events {
		if e.Type == EV_NO_ACTION {
			continue
		}
		out = append(out, Extend{PCR: e.PCR, Digest: e.SHA256})
	}
	return out
}

// PCRs returns the final SHA-256 values of PCRs 0-7 and of every other PCR
// the log measures, starting from the reset value of all zeros (locality
// 0), as a TPM holds them after the extends.
func (l *Log) PCRs() map[int][]byte {
	return l.replay(sha256.New().Size(), func(e Event) []byte { return e.SHA256[:] }, sha256Extend)
}

// SHA1PCRs is PCRs for the SHA-1 bank.
func (l *Log) SHA1PCRs() map[int][]byte {
	return l.replay(sha1.Size, func(e Event) []byte { return e.SHA1[:] }, sha1Extend)
}

func (l *Log) replay(size int, digest func(Event) []byte, extend func(pcr, d []byte) []byte) map[int][]byte {
	pcrs := make(map[int][]byte)
	for i := 0; i <= 7; i++ {
		pcrs[i] = make([]byte, size)
	}
	for _, e := range l.Events {
		if e.Type == EV_NO_ACTION {
			continue
		}
		v, ok := pcrs[e.PCR]
		if !ok {
			v = make([]byte, size)
		}
		pcrs[e.PCR] = extend(v, digest(e))
	}
	return pcrs
}

func sha256Extend(pcr, d []byte) []byte {
	s := sha256.Sum256(append(bytes.Clone(pcr), d...))
	return s[:]
}

func sha1Extend(pcr, d []byte) []byte {
	s := sha1.Sum(append(bytes.Clone(pcr), d...))
	return s[:]
}

// ExtendTPM runs TPM2_PCR_Extend for every extend of the log, in order, on
// tpm (for example a *tpmsim.TPM): SHA-256 digests, and SHA-1 digests too
// when l.SHA1 is set. The PCRs should be at their reset values first
// (a fresh or reset TPM).
func (l *Log) ExtendTPM(tpm transport.TPM) error {
	for i, e := range l.Events {
		if e.Type == EV_NO_ACTION {
			continue
		}
		digests := []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: e.SHA256[:]}}
		if l.SHA1 {
			digests = append(digests, tpm2.TPMTHA{HashAlg: tpm2.TPMAlgSHA1, Digest: e.SHA1[:]})
		}
		cmd := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(e.PCR), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: digests},
		}
		if _, err := cmd.Execute(tpm); err != nil {
			return fmt.Errorf("eventlogtest: extending event %d into PCR %d: %w", i, e.PCR, err)
		}
	}
	return nil
}

// TouchedPCRs returns the PCRs the log measures into, ascending.
func (l *Log) TouchedPCRs() []int {
	seen := map[int]bool{}
	for _, e := range l.Events {
		if e.Type != EV_NO_ACTION {
			seen[e.PCR] = true
		}
	}
	out := make([]int, 0, len(seen))
	for i := range seen {
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

func separator(pcr int) Event {
	return NewEvent(pcr, EV_SEPARATOR, []byte{0, 0, 0, 0})
}

func le16(b *bytes.Buffer, v uint16) { _ = binary.Write(b, binary.LittleEndian, v) }
func le32(b *bytes.Buffer, v uint32) { _ = binary.Write(b, binary.LittleEndian, v) }
func le64(b *bytes.Buffer, v uint64) { _ = binary.Write(b, binary.LittleEndian, v) }
