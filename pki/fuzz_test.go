package pki_test

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"go.step.sm/crypto/jose"

	"github.com/edgeenroll/edgeenroll/pki"
)

// FuzzVerifyBundle feeds arbitrary strings to the device-side verifier. The
// invariant: no panic, and success only ever returns a bundle that passes
// every documented check for this device at this time.
func FuzzVerifyBundle(f *testing.F) {
	e := newBundleEnv(f)
	valid := e.sign(f, e.bundle())
	parts := strings.Split(valid, ".")
	header := func(h string) string { return b64(h) + "." + parts[1] + "." + parts[2] }

	f.Add(valid)
	f.Add(e.forge(f, payloadJSON(e.id, 0, e.iat, e.exp, e.config)))
	f.Add(e.forge(f, payloadJSON(e.id, 7, e.iat, e.exp, `{"a":{"b":[1,2,{"c":null}]}}`)))
	f.Add("")
	f.Add("..")
	f.Add("a.b.c")
	f.Add("not a jws at all")
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add(header(`{"alg":"none"}`))
	f.Add(header(`{"alg":"HS256","typ":"edgeenroll-bundle+jws","x5c":["AAAA"]}`))
	f.Add(header(`{"alg":"ES256","typ":"edgeenroll-bundle+jws","x5c":[]}`))
	f.Add(header(`{"alg":"ES256","typ":"edgeenroll-bundle+jws","x5c":["` + base64.StdEncoding.EncodeToString([]byte("not der")) + `"]}`))
	f.Add(header(`{"alg":"ES256","alg":"ES256"}`))
	f.Add(header(`[]`))
	f.Add(header(strings.Repeat("[", 100)))
	f.Add(parts[0] + "." + b64(`{"device_id":1}`) + "." + parts[2])

	f.Fuzz(func(t *testing.T, compact string) {
		b, err := pki.VerifyBundle(compact, e.roots, e.id, e.now)
		if err != nil {
			if b != nil {
				t.Fatalf("bundle %+v returned with error %v", b, err)
			}
			return
		}
		if b == nil {
			t.Fatal("nil bundle without an error")
		}
		problems := []string{}
		if b.DeviceID != e.id {
			problems = append(problems, "device id "+b.DeviceID)
		}
		if b.Version < 1 {
			problems = append(problems, "version 0")
		}
		if e.now.Before(b.IssuedAt.Add(-pki.BundleClockSkew)) || e.now.After(b.ExpiresAt) {
			problems = append(problems, fmt.Sprintf("not valid now: %s..%s", b.IssuedAt, b.ExpiresAt))
		}
		if len(b.Config) == 0 || b.Config[0] != '{' || len(b.Config) > pki.MaxBundleBytes {
			problems = append(problems, "config is not a bounded object")
		}
		if len(problems) > 0 {
			t.Fatalf("accepted a bundle that fails checks: %v", problems)
		}
	})
}

// FuzzVerifyBundlePayload signs arbitrary payloads with the genuine bundle
// signer, so the fuzzer reaches the strict payload decoder behind the
// signature check. The invariants: no panic, and an accepted payload decodes
// with encoding/json to the same bundle (the strict decoder never disagrees
// with the lenient one on what it accepts).
func FuzzVerifyBundlePayload(f *testing.F) {
	e := newBundleEnv(f)
	key := readKey(f, e.dir, pki.BundleSignerKeyFile)
	chain := []*x509.Certificate{e.ca.BundleSigner(), e.ca.Intermediate()}

	f.Add(string(e.validPayload()))
	f.Add(string(payloadJSON(e.id, 0, e.iat, e.exp, e.config)))
	f.Add(string(payloadJSON(e.id, 7, e.iat, e.exp, `{"a":{"b":[1,2.5e3,true,null,{"c":"\u00e9"}]}}`)))
	f.Add(string(payloadJSON(e.id, 7, e.iat, e.exp, `{"a":1,"a":2}`)))
	f.Add(string(payloadJSON(e.id, 7, e.iat, e.exp, `[]`)))
	f.Add(string(payloadJSON(e.id, 7, e.exp, e.iat, e.config)))
	f.Add(`{"device_id":"` + e.id + `","DEVICE_ID":"x"}`)
	f.Add(string(e.validPayload()) + " {}")
	f.Add(`{}`)
	f.Add(`null`)
	f.Add(``)

	f.Fuzz(func(t *testing.T, payload string) {
		compact := signJWS(t, key, jose.ES256, pki.BundleJWSType, chain, []byte(payload))
		b, err := pki.VerifyBundle(compact, e.roots, e.id, e.now)
		if err != nil {
			if b != nil {
				t.Fatalf("bundle returned with error %v", err)
			}
			return
		}
		var lenient pki.Bundle
		if err := json.Unmarshal([]byte(payload), &lenient); err != nil {
			t.Fatalf("strict decoder accepted what encoding/json refuses: %v", err)
		}
		if lenient.DeviceID != b.DeviceID || lenient.Version != b.Version || !lenient.IssuedAt.Equal(b.IssuedAt) ||
			!lenient.ExpiresAt.Equal(b.ExpiresAt) || !bytes.Equal(lenient.Config, b.Config) {
			t.Fatalf("decoders disagree: strict %+v, lenient %+v", b, lenient)
		}
	})
}
