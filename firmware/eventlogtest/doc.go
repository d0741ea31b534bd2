// Package eventlogtest builds realistic TCG PC Client event logs for tests:
// the measured-boot log a UEFI platform firmware would hand to the OS, in
// the crypto-agile format of the TCG PC Client Platform Firmware Profile
// (PFP, Version 1.05): a TCG_PCR_EVENT header carrying the Spec ID Event03
// structure, then one TCG_PCR_EVENT2 per measurement with a SHA-256 digest
// (and optionally a SHA-1 digest too). It can also write the legacy SHA-1
// format (TCG_PCR_EVENT entries only) of the same measurements.
//
// A software TPM has no firmware, so a measured-boot test builds a log with
// New, extends the same digests into the TPM's PCRs (Log.ExtendTPM, or
// Log.Extends with any TPM API), quotes, and hands the log and the quote to
// the code under test, the way a device does on hardware. Log.PCRs gives the
// final SHA-256 PCR values the log replays to, for tests without a TPM.
//
// The default log is deterministic: the same Options give the same bytes on
// every run. It describes one boot of an imaginary platform:
//
//	PCR 0  EV_S_CRTM_VERSION, two EV_EFI_PLATFORM_FIRMWARE_BLOB2 (PEIFV, DXEFV)
//	PCR 7  EV_EFI_VARIABLE_DRIVER_CONFIG SecureBoot, PK, KEK, db, dbx; EV_SEPARATOR
//	PCR 1  EV_EFI_VARIABLE_BOOT BootOrder, Boot0001
//	PCR 4  EV_EFI_ACTION "Calling EFI Application from Boot Option"
//	PCR 0-6 EV_SEPARATOR
//	PCR 7  EV_EFI_VARIABLE_AUTHORITY (the db certificate that verified the
//	       boot loader; only with secure boot on)
//	PCR 4  EV_EFI_BOOT_SERVICES_APPLICATION boot loader, then kernel
//	PCR 5  EV_EFI_ACTION "Exit Boot Services Invocation",
//	       "Exit Boot Services Returned with Success"
//
// This order follows what EDK2-based firmware does (the PCR 7 separator
// closes the secure-boot configuration before boot variables are read; the
// separators of PCRs 0-6 are measured at ReadyToBoot, before the first boot
// option runs).
//
// Stand-ins, where real firmware measures things a test cannot have: a boot
// application's digest is the SHA-256 of the bytes given as its image (real
// firmware hashes the PE/COFF image the Authenticode way), and a firmware
// volume's digest is the SHA-256 of bytes derived from the firmware version.
// The secure-boot keys are Ed25519 certificates derived from fixed seeds
// (PK self-signed, KEK signed by PK, db signed by KEK), so the log is
// byte-for-byte reproducible; real platforms use RSA-2048.
//
// Tests edit a Log's Events (drop a separator, change a digest, append an
// event after the quote) to build refusal cases. Every event's digests are
// fields, so a test can also make one that does not match its data.
//
// It is test tooling: nothing in it is secure, and production code must not
// import it.
package eventlogtest
