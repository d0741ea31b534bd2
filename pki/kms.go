package pki

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"strings"

	"go.step.sm/crypto/kms"
	"go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/kms/uri"

	// softkms keys are PEM files outside the CA directory: pure Go, always
	// built in. PKCS#11 needs cgo and a build tag (kms_pkcs11.go).
	_ "go.step.sm/crypto/kms/softkms"
)

// ErrKMS means a key named by a KMS URI cannot be used: the KMS type is not
// built in, the key is missing or unreadable, or the key does not match its
// certificate.
var ErrKMS = errors.New("pki: kms key is unusable")

// kmsKey is a CA signing key held by a KMS instead of a file in the CA
// directory.
type kmsKey struct {
	uri     string
	manager apiv1.KeyManager
	signer  crypto.Signer
}

// validateKeyURI checks the form of a KMS URI named in Options: a known
// scheme with a key to name. Whether the KMS type is built in and the key
// exists is checked when it is opened.
func validateKeyURI(field, s string) error {
	if s == "" {
		return nil
	}
	t, err := apiv1.TypeOf(s)
	if err != nil {
		return fmt.Errorf("%s %.200q is not a KMS URI (softkms:path=/file.key or pkcs11:...): %w", field, s, err)
	}
	if t == apiv1.SoftKMS && softKMSPath(s) == "" {
		return fmt.Errorf("%s %.200q names no key file; use softkms:path=/absolute/file.key", field, s)
	}
	return nil
}

// openKMSKey opens the key named by rawURI. A softkms key file must not be
// accessible to group or others (ErrKeyPermissions), like the CA's own key
// files, and is never decrypted interactively.
func openKMSKey(rawURI string) (*kmsKey, error) {
	t, err := apiv1.TypeOf(rawURI)
	if err != nil {
		return nil, fmt.Errorf("%w: %.200q: %w", ErrKMS, rawURI, err)
	}
	if t == apiv1.SoftKMS {
		path := softKMSPath(rawURI)
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("%w: softkms key: %w", ErrKMS, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: softkms key %s is not a regular file", ErrKMS, path)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("%w: %s has mode %#o; run chmod 600 %s", ErrKeyPermissions, path, perm, path)
		}
	}
	m, err := kms.New(context.Background(), apiv1.Options{Type: t, URI: rawURI})
	if err != nil {
		hint := ""
		if t == apiv1.PKCS11 {
			hint = "; PKCS#11 needs a build with cgo and -tags pkcs11"
		}
		return nil, fmt.Errorf("%w: opening %s kms: %w%s", ErrKMS, t, err, hint)
	}
	signer, err := m.CreateSigner(&apiv1.CreateSignerRequest{
		SigningKey:       rawURI,
		PasswordPrompter: apiv1.NonInteractivePasswordPrompter,
	})
	if err != nil {
		_ = m.Close()
		return nil, fmt.Errorf("%w: key %s: %w", ErrKMS, redactURI(rawURI), err)
	}
	return &kmsKey{uri: rawURI, manager: m, signer: signer}, nil
}

// softKMSPath is the key file a softkms URI names.
func softKMSPath(rawURI string) string {
	u, err := uri.ParseWithScheme(string(apiv1.SoftKMS), rawURI)
	if err != nil {
		return ""
	}
	if p := u.Get("path"); p != "" {
		return p
	}
	if u.Path != "" {
		return u.Path
	}
	return u.Opaque
}

// redactURI drops a URI's query, and any pin-value attribute of its path
// (pkcs11 URIs may carry the PIN in either), so it can appear in errors
// and logs.
func redactURI(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		s = s[:i] + "?<redacted>"
	}
	if i := strings.Index(s, "pin-value="); i >= 0 {
		end := strings.IndexAny(s[i:], ";?")
		if end < 0 {
			end = len(s) - i
		}
		s = s[:i] + "pin-value=<redacted>" + s[i+end:]
	}
	return s
}
