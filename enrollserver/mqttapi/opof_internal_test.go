package mqttapi

import (
	"fmt"
	"testing"
)

func TestEnvelopeOf(t *testing.T) {
	for _, tt := range []struct {
		payload, wantID, want string
	}{
		{`{"id":"a","op":"finish","finish":{}}`, "a", "finish"},
		{`{"op":"begin"}`, "", "begin"},
		{`{"id":"a","correlation_id":"c","finish":{"x":1},"op":"finish"}`, "a", "finish"},
		{`{"a":1,"b":2,"c":3,"d":4,"op":"finish"}`, "", ""}, // beyond maxEnvelopeKeys
		{`{"id":"a","op":7}`, "a", ""},
		{`{"id":"a","op":`, "a", ""},
		{`[]`, "", ""},
		{``, "", ""},
		{`not json`, "", ""},
	} {
		if id, op := envelopeOf([]byte(tt.payload)); id != tt.wantID || op != tt.want {
			t.Errorf("envelopeOf(%s) = %q, %q, want %q, %q", tt.payload, id, op, tt.wantID, tt.want)
		}
	}
}

func BenchmarkEnvelopeOf(b *testing.B) {
	payload := []byte(`{"id":"0123456789abcdef","op":"finish","correlation_id":"c","finish":{"session_id":"s","quote":"` + string(make([]byte, 0)) + `"}}`)
	big := append([]byte(nil), payload[:len(payload)-3]...)
	for range 8000 {
		big = append(big, 'A')
	}
	big = append(big, `"}}`...)
	for b.Loop() {
		envelopeOf(big)
	}
}

// The answer cache for redelivered requests is bounded in bytes, not only
// in count: a storm of large finish answers cannot hold memory for its TTL.
func TestRememberBoundedInBytes(t *testing.T) {
	h := newHandler(nil, nil, nil)
	defer h.close()
	payload := make([]byte, 1<<20)
	for i := range 100 {
		h.remember(fmt.Sprintf("client/%d", i), payload)
		if h.bytes > maxDedupeBytes {
			t.Fatalf("after %d answers the cache holds %d bytes, over %d", i+1, h.bytes, maxDedupeBytes)
		}
	}
	if _, ok := h.answer("client/99"); !ok {
		t.Error("the newest answer was dropped")
	}
	if _, ok := h.answer("client/0"); ok {
		t.Error("the oldest answer was kept past the byte bound")
	}
	if want := maxDedupeBytes / len(payload); len(h.answers) != want {
		t.Errorf("%d answers kept, want %d", len(h.answers), want)
	}
}
