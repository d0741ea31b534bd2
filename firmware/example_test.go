package firmware_test

import (
	"fmt"

	"github.com/edgeenroll/edgeenroll/firmware"
	"github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

// The server's measured-boot check: the log the device sent, replayed
// against the PCR values attest.VerifyQuote proved, then judged by the
// group's policy.
func ExampleLog_Replay() {
	boot := eventlogtest.New(nil) // stands in for a device's boot
	eventLog, quoted := boot.Bytes(), boot.PCRs()

	policy := firmware.Policy{
		Approved: []firmware.Reference{{
			Name:           "edgeenroll test firmware 1.0.0",
			FirmwareDigest: "c3d5f481ea5e926539a38e4e616c157ca30bd99ccdb9f7608b04ac083ae3512b",
		}},
		RequireSecureBoot: true,
	}

	log, err := firmware.ParseMeasurements(eventLog)
	if err != nil {
		fmt.Println(firmware.ReasonOf(err), err)
		return
	}
	m, err := log.Replay(quoted, policy.RequiredPCRs)
	if err != nil {
		fmt.Println(firmware.ReasonOf(err), err)
		return
	}
	ref, err := policy.Match(m)
	if err != nil {
		fmt.Println(firmware.ReasonOf(err), err)
		return
	}
	fmt.Printf("approved as %q\n", ref.Name)
	fmt.Printf("firmware version %q, secure boot %v, %d boot applications\n",
		m.FirmwareVersion(), m.SecureBootEnabled(), len(m.BootApplicationDigests()))
	// Output:
	// approved as "edgeenroll test firmware 1.0.0"
	// firmware version "EdgeEnroll Test Firmware 1.0.0", secure boot true, 2 boot applications
}
