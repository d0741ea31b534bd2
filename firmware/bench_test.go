package firmware_test

import (
	"fmt"
	"testing"

	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

// BenchmarkParseAndReplay measures the server's cost for one device's
// measured boot: ParseMeasurements, Replay against the quoted PCRs and
// Evaluate, on the generator's default log (24 events, secure boot on, one
// SHA-256 bank; about 4 KiB), the same with both banks, and a log the size
// of a real server's with shim and GRUB (eventlogtest.Realistic: 301 events
// over PCRs 0-9 and 14, about 30 KiB). Sub-benchmarks time the steps alone;
// "evaluate" is Policy.Evaluate alone against a policy of 100 approved
// references.
//
//	go test -run '^$' -bench BenchmarkParseAndReplay -count 5 ./firmware
func BenchmarkParseAndReplay(b *testing.B) {
	for _, tc := range []struct {
		name string
		opts *elt.Options
	}{
		{"sha256", nil},
		{"sha1+sha256", &elt.Options{SHA1: true}},
		{"realistic-301-events", elt.Realistic()},
	} {
		l := elt.New(tc.opts)
		log, pcrs := l.Bytes(), l.PCRs()
		m0 := replay(b, l)
		// 99 other firmware images, then this one: Evaluate scans them all.
		var approved []firmware.Reference
		for i := range 99 {
			approved = append(approved, firmware.Reference{Name: fmt.Sprintf("other %d", i), FirmwareDigest: fmt.Sprintf("%064x", i+1)})
		}
		approved = append(approved, firmware.Reference{Name: "this", FirmwareDigest: m0.FirmwareDigest()})
		policy := firmware.Policy{Approved: approved, RequireSecureBoot: true}
		b.Run(tc.name+"/total", func(b *testing.B) {
			b.SetBytes(int64(len(log)))
			b.ReportAllocs()
			for b.Loop() {
				lg, err := firmware.ParseMeasurements(log)
				if err != nil {
					b.Fatal(err)
				}
				m, err := lg.Replay(pcrs, nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := policy.Evaluate(m); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/parse", func(b *testing.B) {
			b.SetBytes(int64(len(log)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := firmware.ParseMeasurements(log); err != nil {
					b.Fatal(err)
				}
			}
		})
		lg, err := firmware.ParseMeasurements(log)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name+"/replay", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := lg.Replay(pcrs, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tc.name+"/evaluate", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := policy.Evaluate(m0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
