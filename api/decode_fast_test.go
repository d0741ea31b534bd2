package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// plainJSON may only say yes where checkDuplicateKeys finds nothing to
// refuse, and should say yes to the messages devices send.
func TestPlainJSON(t *testing.T) {
	deep := strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth)
	tooDeep := strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1)
	for _, tt := range []struct {
		body  string
		plain bool
	}{
		{`{"a":1,"b":"x","c":{"a":[1,{"a":2,"b":3}]},"d":null}`, true},
		{` {"session_id" : "s", "pcrs":[{"index":0,"digest":"AA=="},{"index":1,"digest":"AA=="}]} `, true},
		{`{"a":"has \"quoted\" : colon","b":"\\"}`, true},
		{`{"a":{"x":1},"b":{"x":1}}`, true},
		{deep, true},
		{tooDeep, false},
		{`{"a":1,"a":2}`, false},
		{`{"a":1,"A":2}`, false},
		{`{"a":{"b":1,"B":2}}`, false},
		{`{"\u0061":1}`, false},
		{`{"ſ":1}`, false},
		{`{"a":"\xff"}`, false},
		{`{"a":1}{"b":2}`, false},
		{`{"a":1`, false},
		{``, false},
	} {
		if got := plainJSON([]byte(tt.body)); got != tt.plain {
			t.Errorf("plainJSON(%q) = %v, want %v", tt.body, got, tt.plain)
		}
		if plainJSON([]byte(tt.body)) && checkDuplicateKeys([]byte(tt.body)) != nil {
			t.Errorf("plainJSON(%q) accepts what checkDuplicateKeys refuses", tt.body)
		}
	}
}

func FuzzPlainJSON(f *testing.F) {
	for _, s := range []string{`{"a":1,"b":[{"a":1,"A":2}]}`, `{"a":"\"}"}`, `[[{"x":{"y":{}}}]]`, `{"k":1,"K":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !plainJSON(b) {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("plainJSON accepts invalid JSON %q", b)
		}
		if err := checkDuplicateKeys(b); err != nil {
			t.Fatalf("plainJSON accepts %q, checkDuplicateKeys refuses it: %v", b, err)
		}
	})
}

// BenchmarkDuplicateKeyCheck compares checkDuplicateKeys with its fast
// path on a finish request's shape.
func BenchmarkDuplicateKeyCheck(b *testing.B) {
	req := FinishRequest{SessionID: strings.Repeat("a", SessionIDLen), ActivationProof: make([]byte, 32),
		Quote: Quote{Quote: make([]byte, 145), Signature: make([]byte, 72)}, Key: CertificationParameters{Public: make([]byte, 90),
			CreateAttestation: make([]byte, 150), CreateSignature: make([]byte, 72)}, CSR: make([]byte, 400)}
	for i := range 11 {
		req.PCRs = append(req.PCRs, PCR{Index: i, Digest: make([]byte, 32)})
	}
	body, err := json.Marshal(&req)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("checkDuplicateKeys", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := checkDuplicateKeys(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plainJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !plainJSON(body) {
				b.Fatal("not plain")
			}
		}
	})
}
