package mqttapi

import "testing"

func TestOpOf(t *testing.T) {
	for _, tt := range []struct {
		payload, want string
	}{
		{`{"id":"a","op":"finish","finish":{}}`, "finish"},
		{`{"op":"begin"}`, "begin"},
		{`{"id":"a","correlation_id":"c","finish":{"x":1},"op":"finish"}`, "finish"},
		{`{"a":1,"b":2,"c":3,"d":4,"op":"finish"}`, ""}, // beyond maxEnvelopeKeys
		{`{"id":"a","op":7}`, ""},
		{`{"id":"a","op":`, ""},
		{`[]`, ""},
		{``, ""},
		{`not json`, ""},
	} {
		if got := opOf([]byte(tt.payload)); got != tt.want {
			t.Errorf("opOf(%s) = %q, want %q", tt.payload, got, tt.want)
		}
	}
}

func BenchmarkOpOf(b *testing.B) {
	payload := []byte(`{"id":"0123456789abcdef","op":"finish","correlation_id":"c","finish":{"session_id":"s","quote":"` + string(make([]byte, 0)) + `"}}`)
	big := append([]byte(nil), payload[:len(payload)-3]...)
	for range 8000 {
		big = append(big, 'A')
	}
	big = append(big, `"}}`...)
	for b.Loop() {
		opOf(big)
	}
}
