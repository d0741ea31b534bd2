package firmware_test

import (
	"testing"

	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
)

// BenchmarkParseAndReplay measures the server's cost for one device's
// measured boot: ParseMeasurements, Replay against the quoted PCRs and
// Evaluate, on the generator's default log (24 events, secure boot on, one
// SHA-256 bank; about 4 KiB). Sub-benchmarks time the steps alone.
//
//	go test -run '^$' -bench BenchmarkParseAndReplay -count 5 ./firmware
func BenchmarkParseAndReplay(b *testing.B) {
	for _, tc := range []struct {
		name string
		opts *elt.Options
	}{
		{"sha256", nil},
		{"sha1+sha256", &elt.Options{SHA1: true}},
	} {
		l := elt.New(tc.opts)
		log, pcrs := l.Bytes(), l.PCRs()
		ref := defaultReference(b)
		policy := firmware.Policy{Approved: []firmware.Reference{ref}, RequireSecureBoot: true}
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
	}
}
