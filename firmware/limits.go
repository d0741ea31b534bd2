package firmware

// Every cap on attacker-controlled input lives here. Input over a cap is
// ReasonMalformed. The log's size is checked before anything decodes it;
// the other caps bound what a parsed log may ask of Replay and policy.
const (
	// MaxEventLogSize bounds a TCG event log. Firmware logs of PCs and
	// servers are 20-100 KiB (a large dbx adds ~15 KiB per bank); 1 MiB
	// leaves room for logs with many option ROMs and both banks, and
	// bounds the parser's work and memory (a few times the input).
	MaxEventLogSize = 1 << 20
	// MaxEvents bounds the number of events. Real logs have 50-500.
	MaxEvents = 4096
	// MaxEventDataSize bounds one event's data. The largest real events
	// are EV_EFI_VARIABLE_DRIVER_CONFIG of db/dbx (tens of KiB).
	MaxEventDataSize = 256 << 10
	// MaxVersionSize bounds the EV_S_CRTM_VERSION data that is decoded as
	// the firmware version; longer data leaves the version empty.
	MaxVersionSize = 512

	// MaxPCRs is the number of PCRs in a bank (PC Client TPM profile):
	// indices 0..23. An event for a higher index is malformed.
	MaxPCRs = 24
	// PCRDigestSize is the size of a SHA-256 PCR value, the only bank
	// Replay accepts (what attest.VerifyQuote returns).
	PCRDigestSize = 32

	// MaxReferences bounds a Policy's approved firmware list.
	MaxReferences = 1024
	// MaxReferenceNameSize bounds a Reference's name.
	MaxReferenceNameSize = 256
)

// LastFirmwarePCR is the highest of PCRs 0-7, which platform firmware
// measures into before it runs the first boot option (PFP 1.05, "PCR Usage"):
// Replay always needs them quoted and each closed by an EV_SEPARATOR.
const LastFirmwarePCR = 7
