package pki

import "testing"

// TestRedactURI: a PIN never reaches an error or a log, whether a pkcs11
// URI carries it in its query or as a path attribute.
func TestRedactURI(t *testing.T) {
	for in, want := range map[string]string{
		"softkms:path=/srv/keys/i.key":                      "softkms:path=/srv/keys/i.key",
		"pkcs11:token=ca;id=01?pin-value=1234":              "pkcs11:token=ca;id=01?<redacted>",
		"pkcs11:token=ca;pin-value=1234;id=01":              "pkcs11:token=ca;pin-value=<redacted>;id=01",
		"pkcs11:token=ca;id=01;pin-value=1234":              "pkcs11:token=ca;id=01;pin-value=<redacted>",
		"pkcs11:pin-value=1234;token=ca?pin-source=/a/file": "pkcs11:pin-value=<redacted>;token=ca?<redacted>",
	} {
		if got := redactURI(in); got != want {
			t.Errorf("redactURI(%q) = %q, want %q", in, got, want)
		}
	}
}
