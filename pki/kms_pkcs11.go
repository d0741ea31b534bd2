//go:build pkcs11

package pki

// Keys in an HSM through PKCS#11 (pkcs11: URIs). The driver needs cgo and
// dlopens the module the URI names, so it is built only with -tags pkcs11:
// the default enrolld stays cgo-free.
import _ "go.step.sm/crypto/kms/pkcs11"
