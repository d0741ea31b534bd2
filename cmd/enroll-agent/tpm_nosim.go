//go:build !simulator

package main

import (
	"errors"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spf13/cobra"
)

// openSimulator refuses simulator:DIR in production builds, which do not
// link the software TPM.
func openSimulator(spec string) (transport.TPMCloser, bool, error) {
	if strings.HasPrefix(spec, "simulator:") {
		return nil, true, errors.New("this enroll-agent was built without the TPM simulator: rebuild with -tags simulator (cgo) or use a real TPM or swtpm")
	}
	return nil, false, nil
}

func addSimulatorCommands(*cobra.Command) {}
