package loadgen

import (
	"slices"
	"testing"
)

func TestServerTransport(t *testing.T) {
	for raw, want := range map[string]string{
		"https://localhost:8443": TransportHTTPS,
		"mqtts://127.0.0.1:8883": TransportMQTT,
		"mqtt://localhost:1883":  "",
		"http://localhost:8080":  "",
		"localhost:8443":         "",
	} {
		_, got, err := serverTransport(raw)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("serverTransport(%q) = %q, %v; want %q", raw, got, err, want)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

// TestSetCeiling: each run is set against the ceiling of its own round,
// and the median is of those ratios.
func TestSetCeiling(t *testing.T) {
	r := &TransportResult{Runs: []*Report{{ServerCPUMsPerEnrollment: 2}, {ServerCPUMsPerEnrollment: 2.5}, {ServerCPUMsPerEnrollment: 1.6}}}
	r.setCeiling([]float64{1000, 1250, 1200})
	want := []float64{0.5, 0.5, 0.75}
	if !slices.Equal(r.CeilingRatios, want) || r.CeilingRatio != 0.5 {
		t.Errorf("ratios %v, median %v; want %v, 0.5", r.CeilingRatios, r.CeilingRatio, want)
	}
	// A run without a CPU figure keeps its place, and stays out of the median.
	r.Runs[1].ServerCPUMsPerEnrollment = 0
	r.setCeiling([]float64{1000, 1250, 1200})
	if want := []float64{0.5, 0, 0.75}; !slices.Equal(r.CeilingRatios, want) || r.CeilingRatio != 0.625 {
		t.Errorf("ratios %v, median %v; want %v, 0.625", r.CeilingRatios, r.CeilingRatio, want)
	}
	r.setCeiling(nil)
	if r.CeilingRatios != nil || r.CeilingRatio != 0 {
		t.Errorf("without ceilings: %v, %v", r.CeilingRatios, r.CeilingRatio)
	}
}
