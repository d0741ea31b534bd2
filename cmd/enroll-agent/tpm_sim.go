//go:build simulator

package main

import (
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spf13/cobra"

	"github.com/edgeenroll/edgeenroll/firmware"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// openSimulator opens simulator:DIR, the in-process software TPM whose
// seed and EK certificate live in DIR (see tpmsim.OpenState).
func openSimulator(spec string) (transport.TPMCloser, bool, error) {
	dir, ok := strings.CutPrefix(spec, "simulator:")
	if !ok {
		return nil, false, nil
	}
	t, err := tpmsim.OpenState(dir)
	return t, true, err
}

// addSimulatorCommands adds the demo's "factory": it gives a simulated TPM
// an EK certificate signed by a demo manufacturer CA, as a TPM vendor
// would, and optionally platform firmware that measures itself at every
// start of the simulated TPM (sim-firmware updates it).
func addSimulatorCommands(root *cobra.Command) {
	var state, manufacturer, version string
	var secureBoot bool
	cmd := &cobra.Command{
		Use:   "sim-manufacture",
		Short: "Demo only: create a simulated TPM in --state and certify its EK with the CA in --manufacturer-ca",
		Long: `sim-manufacture creates a simulated TPM in --state and certifies its EK with the
demo manufacturer CA in --manufacturer-ca.

With --firmware-version it also installs simulated platform firmware: every
start of the simulated TPM measures it into the PCRs and writes its TCG event
log to <state>/event_log.bin (send it with --event-log). Without, the TPM has
no firmware and no event log.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := tpmsim.LoadOrCreateManufacturer(manufacturer)
			if err != nil {
				return err
			}
			if version != "" {
				if err := installFirmware(cmd, state, version, secureBoot); err != nil {
					return err
				}
			}
			if _, err := tpmsim.ManufactureState(state, m); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "simulated TPM in %s has an EK certificate from %s (root: %s)\n", state, m.Certificate.Subject, tpmsim.ManufacturerCertPath(manufacturer))
			return nil
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "simulated TPM state directory (required)")
	cmd.Flags().StringVar(&manufacturer, "manufacturer-ca", "", "demo manufacturer CA directory, created if missing (required)")
	cmd.Flags().StringVar(&version, "firmware-version", "", "install simulated platform firmware of this version (default: none)")
	cmd.Flags().BoolVar(&secureBoot, "secure-boot", true, "the simulated firmware boots with UEFI secure boot on")
	cmd.MarkFlagRequired("state")
	cmd.MarkFlagRequired("manufacturer-ca")
	root.AddCommand(cmd)

	var fwState, fwVersion string
	var fwSecureBoot bool
	fw := &cobra.Command{
		Use:   "sim-firmware --state DIR --firmware-version V",
		Short: "Demo only: update the simulated platform firmware in --state (effective at the next start of the simulated TPM)",
		Long: `sim-firmware flashes new simulated platform firmware into the simulated TPM in
--state: it rewrites <state>/event_log.bin. Like a real firmware update it takes
effect at the next power-on, that is the next start of a process using
simulator:<state>, whose PCRs then measure the new firmware. It prints the new
firmware digest, what "enrollctl firmware add --digest" approves.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return installFirmware(cmd, fwState, fwVersion, fwSecureBoot)
		},
	}
	fw.Flags().StringVar(&fwState, "state", "", "simulated TPM state directory (required)")
	fw.Flags().StringVar(&fwVersion, "firmware-version", "", "firmware version (required)")
	fw.Flags().BoolVar(&fwSecureBoot, "secure-boot", true, "boot with UEFI secure boot on")
	fw.MarkFlagRequired("state")
	fw.MarkFlagRequired("firmware-version")
	root.AddCommand(fw)
}

// installFirmware writes the simulated firmware's event log and prints the
// firmware digest its boot gives.
func installFirmware(cmd *cobra.Command, state, version string, secureBoot bool) error {
	o := tpmsim.FirmwareOptions{Version: version, SecureBootDisabled: !secureBoot}
	if _, err := tpmsim.InstallFirmware(state, o); err != nil {
		return err
	}
	l := tpmsim.FirmwareEventLog(o)
	lg, err := firmware.ParseMeasurements(l.Bytes())
	if err != nil {
		return err
	}
	m, err := lg.Replay(l.PCRs(), nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "simulated firmware %q (secure boot %v) in %s: firmware digest %s; event log %s (%d events)\n",
		version, secureBoot, state, m.FirmwareDigest(), tpmsim.EventLogPath(state), len(l.Events))
	return nil
}
