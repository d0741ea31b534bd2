//go:build simulator

package main

import (
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spf13/cobra"

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
// would.
func addSimulatorCommands(root *cobra.Command) {
	var state, manufacturer string
	cmd := &cobra.Command{
		Use:   "sim-manufacture",
		Short: "Demo only: create a simulated TPM in --state and certify its EK with the CA in --manufacturer-ca",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := tpmsim.LoadOrCreateManufacturer(manufacturer)
			if err != nil {
				return err
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
	cmd.MarkFlagRequired("state")
	cmd.MarkFlagRequired("manufacturer-ca")
	root.AddCommand(cmd)
}
