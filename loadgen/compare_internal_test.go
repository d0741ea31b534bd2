package loadgen

import "testing"

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
