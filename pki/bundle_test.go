package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/edgeenroll/edgeenroll/pki"
)

// bundleEnv is a CA created at t0, a device, and a bundle timeline:
// issued at iat = t0+1h, expiring at exp = t0+3h, verified at now = t0+2h.
type bundleEnv struct {
	ca     *pki.CA
	dir    string
	roots  *x509.CertPool
	id     string
	iat    time.Time
	exp    time.Time
	now    time.Time
	config string
}

func newBundleEnv(tb testing.TB) *bundleEnv {
	tb.Helper()
	ca, dir := newCA(tb, t0)
	return &bundleEnv{
		ca: ca, dir: dir, roots: ca.RootPool(), id: deviceID("bundle device"),
		iat: t0.Add(time.Hour), exp: t0.Add(3 * time.Hour), now: t0.Add(2 * time.Hour),
		config: `{"mqtt":{"broker":"mqtts://broker.example:8883","topics":["a","b"]},"interval_s":30}`,
	}
}

func (e *bundleEnv) bundle() pki.Bundle {
	return pki.Bundle{DeviceID: e.id, Version: 7, IssuedAt: e.iat, ExpiresAt: e.exp, Config: json.RawMessage(e.config)}
}

func (e *bundleEnv) sign(tb testing.TB, b pki.Bundle) string {
	tb.Helper()
	s, err := e.ca.SignBundle(b)
	if err != nil {
		tb.Fatalf("SignBundle: %v", err)
	}
	return s
}

// forge signs payload with the genuine bundle signer key and chain, so that
// only the payload decides the outcome.
func (e *bundleEnv) forge(tb testing.TB, payload []byte) string {
	tb.Helper()
	return signJWS(tb, readKey(tb, e.dir, pki.BundleSignerKeyFile), jose.ES256, pki.BundleJWSType,
		[]*x509.Certificate{e.ca.BundleSigner(), e.ca.Intermediate()}, payload)
}

func (e *bundleEnv) validPayload() []byte {
	return payloadJSON(e.id, 7, e.iat, e.exp, e.config)
}

func TestBundleRoundTrip(t *testing.T) {
	e := newBundleEnv(t)
	in := e.bundle()
	compact := e.sign(t, in)

	for _, now := range []time.Time{e.iat.Add(-pki.BundleClockSkew), e.iat, e.now, e.exp} {
		got, err := pki.VerifyBundle(compact, e.roots, e.id, now)
		if err != nil {
			t.Fatalf("VerifyBundle at %s: %v", now, err)
		}
		if got.DeviceID != in.DeviceID || got.Version != in.Version || !got.IssuedAt.Equal(in.IssuedAt) || !got.ExpiresAt.Equal(in.ExpiresAt) || string(got.Config) != string(in.Config) {
			t.Fatalf("round trip: got %+v, want %+v", got, in)
		}
	}

	// The protected header is exactly alg, typ and x5c (signer, intermediate).
	hdr, err := base64.RawURLEncoding.DecodeString(strings.Split(compact, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatal(err)
	}
	if h["alg"] != "ES256" || h["typ"] != pki.BundleJWSType || len(h) != 3 {
		t.Errorf("header = %v, want alg ES256, typ %s, x5c", h, pki.BundleJWSType)
	}
	if x, _ := h["x5c"].([]any); len(x) != 2 || x[0] != x5c(e.ca.BundleSigner())[0] || x[1] != x5c(e.ca.Intermediate())[0] {
		t.Errorf("x5c is not [bundle signer, intermediate]")
	}
}

func TestBundleConfigIsNotHTMLEscaped(t *testing.T) {
	e := newBundleEnv(t)
	b := e.bundle()
	b.Config = json.RawMessage(`{ "script": "a < b && c > d" }`)
	got, err := pki.VerifyBundle(e.sign(t, b), e.roots, e.id, e.now)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"script":"a < b && c > d"}`; string(got.Config) != want {
		t.Errorf("config = %s, want %s (compacted, unescaped)", got.Config, want)
	}
}

func TestVerifyBundleRefusals(t *testing.T) {
	e := newBundleEnv(t)
	valid := e.sign(t, e.bundle())
	parts := strings.Split(valid, ".")

	otherCA, _ := newCA(t, t0)

	tests := []struct {
		name    string
		compact func(t *testing.T) string
		roots   *x509.CertPool // nil means e.roots
		id      string         // "" means e.id
		now     time.Time      // zero means e.now
		wantErr error
	}{
		{
			name: "tampered payload",
			compact: func(t *testing.T) string {
				return parts[0] + "." + base64.RawURLEncoding.EncodeToString(payloadJSON(e.id, 8, e.iat, e.exp, e.config)) + "." + parts[2]
			},
			wantErr: pki.ErrBundleSignature,
		},
		{
			name: "tampered signature",
			compact: func(t *testing.T) string {
				sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
				sig[0] ^= 1
				return parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)
			},
			wantErr: pki.ErrBundleSignature,
		},
		{
			name: "signed by another CA's bundle signer",
			compact: func(t *testing.T) string {
				b := e.bundle()
				s, err := otherCA.SignBundle(b)
				if err != nil {
					t.Fatal(err)
				}
				return s
			},
			wantErr: pki.ErrBundleChain,
		},
		{
			name: "another CA's key with our chain in x5c",
			compact: func(t *testing.T) string {
				_, otherDir := newCA(t, t0)
				return signJWS(t, readKey(t, otherDir, pki.BundleSignerKeyFile), jose.ES256, pki.BundleJWSType,
					[]*x509.Certificate{e.ca.BundleSigner(), e.ca.Intermediate()}, e.validPayload())
			},
			wantErr: pki.ErrBundleSignature,
		},
		{
			name: "signed with a device (client auth) certificate",
			compact: func(t *testing.T) string {
				key := newP256(t)
				issued, err := e.ca.IssueDevice(t.Context(), pki.DeviceCertRequest{DeviceID: e.id, PublicKey: &key.PublicKey})
				if err != nil {
					t.Fatal(err)
				}
				return signJWS(t, key, jose.ES256, pki.BundleJWSType, issued.Chain, e.validPayload())
			},
			wantErr: pki.ErrBundleChain,
		},
		{
			name: "signed with a server certificate",
			compact: func(t *testing.T) string {
				cert, err := e.ca.IssueServer([]string{"localhost"}, 0)
				if err != nil {
					t.Fatal(err)
				}
				return signJWS(t, cert.PrivateKey.(crypto.Signer), jose.ES256, pki.BundleJWSType, []*x509.Certificate{cert.Leaf, e.ca.Intermediate()}, e.validPayload())
			},
			wantErr: pki.ErrBundleChain,
		},
		{
			name: "signed with the intermediate key (no extended key usage)",
			compact: func(t *testing.T) string {
				return signJWS(t, readKey(t, e.dir, pki.IntermediateKeyFile), jose.ES256, pki.BundleJWSType,
					[]*x509.Certificate{e.ca.Intermediate()}, e.validPayload())
			},
			wantErr: pki.ErrBundleChain,
		},
		{
			name: "x5c without the intermediate",
			compact: func(t *testing.T) string {
				return signJWS(t, readKey(t, e.dir, pki.BundleSignerKeyFile), jose.ES256, pki.BundleJWSType, []*x509.Certificate{e.ca.BundleSigner()}, e.validPayload())
			},
			wantErr: pki.ErrBundleChain,
		},
		{
			name:    "verified against another root",
			compact: func(t *testing.T) string { return valid },
			roots:   otherCA.RootPool(),
			wantErr: pki.ErrBundleChain,
		},
		{
			name:    "verified after the signer certificate expired",
			compact: func(t *testing.T) string { return valid },
			now:     e.ca.BundleSigner().NotAfter.Add(time.Second),
			wantErr: pki.ErrBundleChain,
		},
		{
			name: "alg none",
			compact: func(t *testing.T) string {
				h := fmt.Sprintf(`{"alg":"none","typ":%q,"x5c":[%q,%q]}`, pki.BundleJWSType, x5c(e.ca.BundleSigner())[0], x5c(e.ca.Intermediate())[0])
				return b64(h) + "." + base64.RawURLEncoding.EncodeToString(e.validPayload()) + "."
			},
			wantErr: pki.ErrBundleAlgorithm,
		},
		{
			name: "alg none with a signature",
			compact: func(t *testing.T) string {
				h := fmt.Sprintf(`{"alg":"none","typ":%q,"x5c":[%q,%q]}`, pki.BundleJWSType, x5c(e.ca.BundleSigner())[0], x5c(e.ca.Intermediate())[0])
				return b64(h) + "." + base64.RawURLEncoding.EncodeToString(e.validPayload()) + "." + b64("x")
			},
			wantErr: pki.ErrBundleAlgorithm,
		},
		{
			name: "HS256 keyed with the signer certificate",
			compact: func(t *testing.T) string {
				h := fmt.Sprintf(`{"alg":"HS256","typ":%q,"x5c":[%q,%q]}`, pki.BundleJWSType, x5c(e.ca.BundleSigner())[0], x5c(e.ca.Intermediate())[0])
				input := b64(h) + "." + base64.RawURLEncoding.EncodeToString(e.validPayload())
				mac := hmac.New(sha256.New, e.ca.BundleSigner().Raw)
				mac.Write([]byte(input))
				return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
			},
			wantErr: pki.ErrBundleAlgorithm,
		},
		{
			name: "ES384",
			compact: func(t *testing.T) string {
				key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				return signJWS(t, key, jose.ES384, pki.BundleJWSType,
					[]*x509.Certificate{e.ca.BundleSigner(), e.ca.Intermediate()}, e.validPayload())
			},
			wantErr: pki.ErrBundleAlgorithm,
		},
		{
			name: "wrong typ",
			compact: func(t *testing.T) string {
				return signJWS(t, readKey(t, e.dir, pki.BundleSignerKeyFile), jose.ES256, "JWT",
					[]*x509.Certificate{e.ca.BundleSigner(), e.ca.Intermediate()}, e.validPayload())
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name: "extra header (crit)",
			compact: func(t *testing.T) string {
				h := fmt.Sprintf(`{"alg":"ES256","typ":%q,"x5c":[%q],"crit":["exp"]}`, pki.BundleJWSType, x5c(e.ca.BundleSigner())[0])
				return b64(h) + "." + parts[1] + "." + parts[2]
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name: "duplicate alg header",
			compact: func(t *testing.T) string {
				h := fmt.Sprintf(`{"alg":"HS256","alg":"ES256","typ":%q,"x5c":[%q]}`, pki.BundleJWSType, x5c(e.ca.BundleSigner())[0])
				return b64(h) + "." + parts[1] + "." + parts[2]
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name:    "wrong device",
			compact: func(t *testing.T) string { return valid },
			id:      deviceID("another device"),
			wantErr: pki.ErrBundleDevice,
		},
		{
			name:    "expired",
			compact: func(t *testing.T) string { return valid },
			now:     e.exp.Add(time.Second),
			wantErr: pki.ErrBundleExpired,
		},
		{
			name:    "not yet valid",
			compact: func(t *testing.T) string { return valid },
			now:     e.iat.Add(-pki.BundleClockSkew - time.Second),
			wantErr: pki.ErrBundleNotYetValid,
		},
		{
			name:    "oversized JWS",
			compact: func(t *testing.T) string { return valid + strings.Repeat("A", pki.MaxBundleJWSBytes) },
			wantErr: pki.ErrBundleTooLarge,
		},
		{
			name: "oversized config, genuinely signed",
			compact: func(t *testing.T) string {
				config := `{"pad":"` + strings.Repeat("x", pki.MaxBundleBytes) + `"}`
				return e.forge(t, payloadJSON(e.id, 7, e.iat, e.exp, config))
			},
			wantErr: pki.ErrBundleTooLarge,
		},
		{
			name:    "version 0, genuinely signed",
			compact: func(t *testing.T) string { return e.forge(t, payloadJSON(e.id, 0, e.iat, e.exp, e.config)) },
			wantErr: pki.ErrBundleVersion,
		},
		{
			name: "unknown payload field, genuinely signed",
			compact: func(t *testing.T) string {
				p := e.validPayload()
				return e.forge(t, append(p[:len(p)-1], `,"admin":true}`...))
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name: "payload field in other case, genuinely signed",
			compact: func(t *testing.T) string {
				return e.forge(t, []byte(strings.Replace(string(e.validPayload()), `"version"`, `"Version"`, 1)))
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name: "duplicate payload field, genuinely signed",
			compact: func(t *testing.T) string {
				p := e.validPayload()
				return e.forge(t, append([]byte(`{"device_id":"`+deviceID("x")+`",`), p[1:]...))
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name: "duplicate key inside config, genuinely signed",
			compact: func(t *testing.T) string {
				return e.forge(t, payloadJSON(e.id, 7, e.iat, e.exp, `{"broker":"a","broker":"b"}`))
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name: "trailing data, genuinely signed",
			compact: func(t *testing.T) string {
				return e.forge(t, append(e.validPayload(), `{}`...))
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name:    "config not an object, genuinely signed",
			compact: func(t *testing.T) string { return e.forge(t, payloadJSON(e.id, 7, e.iat, e.exp, `["a"]`)) },
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name:    "exp before iat, genuinely signed",
			compact: func(t *testing.T) string { return e.forge(t, payloadJSON(e.id, 7, e.exp, e.iat, e.config)) },
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name: "config nested too deep, genuinely signed",
			compact: func(t *testing.T) string {
				deep := strings.Repeat(`{"a":`, pki.MaxJSONDepth) + "1" + strings.Repeat("}", pki.MaxJSONDepth)
				return e.forge(t, payloadJSON(e.id, 7, e.iat, e.exp, deep))
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name: "JSON serialization",
			compact: func(t *testing.T) string {
				return fmt.Sprintf(`{"protected":%q,"payload":%q,"signature":%q}`, parts[0], parts[1], parts[2])
			},
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name:    "whitespace",
			compact: func(t *testing.T) string { return " " + valid },
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name:    "empty",
			compact: func(t *testing.T) string { return "" },
			wantErr: pki.ErrBundleMalformed,
		},
		{
			name:    "garbage",
			compact: func(t *testing.T) string { return "a.b.c" },
			wantErr: pki.ErrBundleMalformed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roots, id, now := e.roots, e.id, e.now
			if tt.roots != nil {
				roots = tt.roots
			}
			if tt.id != "" {
				id = tt.id
			}
			if !tt.now.IsZero() {
				now = tt.now
			}
			got, err := pki.VerifyBundle(tt.compact(t), roots, id, now)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != nil {
				t.Errorf("got a bundle with an error: %+v", got)
			}
		})
	}

	t.Run("nil roots", func(t *testing.T) {
		if _, err := pki.VerifyBundle(valid, nil, e.id, e.now); !errors.Is(err, pki.ErrBundleChain) {
			t.Fatalf("err = %v, want ErrBundleChain", err)
		}
	})
	t.Run("invalid device id argument", func(t *testing.T) {
		if _, err := pki.VerifyBundle(valid, e.roots, "", e.now); !errors.Is(err, pki.ErrDeviceID) {
			t.Fatalf("err = %v, want ErrDeviceID", err)
		}
	})
}

func TestSignBundleRefusals(t *testing.T) {
	e := newBundleEnv(t)
	tests := []struct {
		name    string
		edit    func(b *pki.Bundle)
		wantErr error
	}{
		{"version 0", func(b *pki.Bundle) { b.Version = 0 }, pki.ErrBundleVersion},
		{"bad device id", func(b *pki.Bundle) { b.DeviceID = "device-1" }, pki.ErrBundleMalformed},
		{"no config", func(b *pki.Bundle) { b.Config = nil }, pki.ErrBundleMalformed},
		{"config null", func(b *pki.Bundle) { b.Config = json.RawMessage(`null`) }, pki.ErrBundleMalformed},
		{"config array", func(b *pki.Bundle) { b.Config = json.RawMessage(`[1]`) }, pki.ErrBundleMalformed},
		{"config invalid JSON", func(b *pki.Bundle) { b.Config = json.RawMessage(`{"a":`) }, pki.ErrBundleMalformed},
		{"config duplicate key", func(b *pki.Bundle) { b.Config = json.RawMessage(`{"a":1,"a":2}`) }, pki.ErrBundleMalformed},
		{"oversized config", func(b *pki.Bundle) {
			b.Config = json.RawMessage(`{"pad":"` + strings.Repeat("x", pki.MaxBundleBytes) + `"}`)
		}, pki.ErrBundleTooLarge},
		{"no iat", func(b *pki.Bundle) { b.IssuedAt = time.Time{} }, pki.ErrBundleMalformed},
		{"exp not after iat", func(b *pki.Bundle) { b.ExpiresAt = b.IssuedAt }, pki.ErrBundleMalformed},
		{"exp after the signer expires", func(b *pki.Bundle) { b.ExpiresAt = e.ca.BundleSigner().NotAfter.Add(time.Second) }, pki.ErrLifetime},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := e.bundle()
			tt.edit(&b)
			got, err := e.ca.SignBundle(b)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != "" {
				t.Error("got a bundle with an error")
			}
		})
	}

	t.Run("signer expired", func(t *testing.T) {
		late, err := pki.LoadOrCreateCA(e.dir, &pki.Options{Now: fixedClock(e.ca.BundleSigner().NotAfter.Add(time.Hour))})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := late.SignBundle(e.bundle()); !errors.Is(err, pki.ErrCAExpired) {
			t.Fatalf("err = %v, want ErrCAExpired", err)
		}
	})
}

func TestBundleLargestConfigFits(t *testing.T) {
	e := newBundleEnv(t)
	b := e.bundle()
	// The largest config, of characters JSON must escape, still fits.
	pad := pki.MaxBundleBytes - len(`{"pad":""}`)
	b.Config = json.RawMessage(`{"pad":"` + strings.Repeat(`\"`, pad/2) + `"}`)
	compact := e.sign(t, b)
	if _, err := pki.VerifyBundle(compact, e.roots, e.id, e.now); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyBundleClockBehind: a device whose clock is behind the server's
// by less than BundleClockSkew accepts a bundle signed by a signer
// certificate the server has just made; further behind, it does not.
func TestVerifyBundleClockBehind(t *testing.T) {
	ca, _ := newCA(t, t0) // the signer certificate starts at t0 - Backdate
	id := deviceID("clock behind")
	b, err := ca.SignBundle(pki.Bundle{DeviceID: id, Version: 1, IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), Config: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pki.VerifyBundle(b, ca.RootPool(), id, t0.Add(-3*time.Minute)); err != nil {
		t.Errorf("3 minutes behind: %v", err)
	}
	if _, err := pki.VerifyBundle(b, ca.RootPool(), id, t0.Add(-pki.Backdate-pki.BundleClockSkew-time.Second)); !errors.Is(err, pki.ErrBundleChain) {
		t.Errorf("past the skew: %v, want %v", err, pki.ErrBundleChain)
	}
}
