package tpmdev

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultDevice is the kernel's TPM resource manager.
const DefaultDevice = "/dev/tpmrm0"

// Open opens a TPM named by spec:
//
//	/dev/tpmrm0 (or any device path)  the kernel TPM device
//	swtpm:HOST:PORT                   swtpm's TCP data port
//
// The in-process simulator is not reachable from here: builds that include
// it (the demo, tests) open it through package tpmsim.
func Open(ctx context.Context, spec string) (transport.TPMCloser, error) {
	switch {
	case strings.HasPrefix(spec, "swtpm:"):
		return DialSwtpm(ctx, strings.TrimPrefix(spec, "swtpm:"))
	case strings.HasPrefix(spec, "/"):
		t, err := linuxtpm.Open(spec)
		if err != nil {
			return nil, fmt.Errorf("opening TPM %s: %w (is the agent in the tss group?)", spec, err)
		}
		return t, nil
	default:
		return nil, fmt.Errorf("unknown TPM %q: want a device path such as %s or swtpm:HOST:PORT", spec, DefaultDevice)
	}
}
