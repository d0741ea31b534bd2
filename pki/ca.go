package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/x509util"
)

// CA is the embedded certificate authority. It is immutable once loaded and
// safe for concurrent use. Its intermediate and bundle-signing keys are held
// in memory, or stay in a KMS (Options.IntermediateKeyURI,
// BundleSignerKeyURI); the root key stays on disk. Formatting a CA
// (fmt, log/slog) prints its trust domain and root serial, never a key.
type CA struct {
	trustDomain string
	now         func() time.Time
	// kms are the KMS connections of keys held in a KMS; Close closes them.
	kms []*kmsKey

	root            *x509.Certificate
	intermediate    *x509.Certificate
	intermediateKey crypto.Signer
	bundleSigner    *x509.Certificate
	bundleKey       crypto.Signer
	// retired are the intermediates rotations replaced that have not
	// expired (loadRetired).
	retired []*RetiredIntermediate
	// unmatchedRetiredURIs: UnmatchedRetiredKeyURIs.
	unmatchedRetiredURIs []string

	// bundleHeader is the protected header of every bundle SignBundle
	// signs (bundleJWSHeader).
	bundleHeaderOnce sync.Once
	bundleHeader     string
	bundleHeaderErr  error
	// lastBundleConfig is the last bundle config SignBundle checked in
	// full.
	lastBundleConfig atomic.Pointer[[]byte]
}

// LoadOrCreateCA loads the CA from dir or, on first start, creates it.
//
// A new CA has an ECDSA P-256 root (self-signed, path length 1), an
// intermediate (path length 0) signed by the root, and a bundle-signing leaf
// (DigitalSignature, ExtKeyUsage CodeSigning only) signed by the
// intermediate, stored as the PEM files named by the *File constants. dir is
// created with mode 0700; each file is written atomically (temporary file,
// fsync, hard link, which never replaces an existing file) and keys get mode
// 0600.
//
// With Options.IntermediateKeyURI or BundleSignerKeyURI set, that key is
// not a file in dir but a key in a KMS, which must exist: a new CA
// certifies it, and loading checks it matches its certificate (ErrKMS when
// it cannot be opened).
//
// Loading refuses a key file that group or others can access
// (ErrKeyPermissions), a directory holding only some of the files
// (ErrCAIncomplete, naming the missing ones; keys are never regenerated over
// a partial directory) and files that do not form one CA (ErrCACorrupt).
// Validity periods are checked when the CA is used, not when it is loaded.
func LoadOrCreateCA(dir string, opts *Options) (*CA, error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, fmt.Errorf("%w: ca directory is empty; name a directory", ErrOptions)
	}
	present, missing, err := inspectDir(dir, cfg)
	if err != nil {
		return nil, err
	}
	switch {
	case len(present) == 0:
		return createCA(dir, cfg)
	case len(missing) == 1 && missing[0] == RootKeyFile:
		// The root key taken offline: only a rotation needs it.
		return loadCA(dir, cfg)
	case len(missing) > 0:
		return nil, fmt.Errorf("%w: %s has %s but is missing %s; restore the missing files from a backup, or move the directory aside to create a new CA (devices must then be given the new root)",
			ErrCAIncomplete, dir, strings.Join(present, ", "), strings.Join(missing, ", "))
	default:
		return loadCA(dir, cfg)
	}
}

func createCA(dir string, cfg config) (_ *CA, err error) {
	keys := new(caKeys)
	defer func() {
		if err != nil {
			keys.close()
		}
	}()
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("creating ca directory: %w", err)
	}
	now := cfg.now()
	notBefore := now.Add(-Backdate)
	rootNotAfter := now.Add(cfg.rootLifetime)
	interNotAfter := minTime(now.Add(cfg.intermediateLifetime), rootNotAfter)

	rootKey, err := newP256Key()
	if err != nil {
		return nil, err
	}
	rootTmpl := rootProfile(cfg.trustDomain, rootKey.Public(), notBefore, rootNotAfter)
	root, err := x509util.CreateCertificate(rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating root certificate: %w", err)
	}

	interKey, err := keys.newOrOpen(cfg.intermediateKeyURI)
	if err != nil {
		return nil, err
	}
	inter, err := x509util.CreateCertificate(intermediateProfile(cfg.trustDomain, interKey.Public(), notBefore, interNotAfter), root, interKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating intermediate certificate: %w", err)
	}

	// The bundle signer lives as long as the intermediate: a device rejects
	// a bundle whose signer has expired, even one it has cached.
	signerKey, err := keys.newOrOpen(cfg.bundleSignerKeyURI)
	if err != nil {
		return nil, err
	}
	if !isP256(signerKey.Public()) {
		return nil, fmt.Errorf("%w: the bundle signer key is a %T; bundles are signed with ES256, give an ECDSA P-256 key", ErrKMS, signerKey.Public())
	}
	signer, err := x509util.CreateCertificate(bundleSignerProfile(cfg.trustDomain, signerKey.Public(), notBefore, interNotAfter), inter, signerKey.Public(), interKey)
	if err != nil {
		return nil, fmt.Errorf("creating bundle signer certificate: %w", err)
	}

	items := []caItem{{name: RootCertFile, cert: root}, {name: RootKeyFile, key: rootKey}, {name: IntermediateCertFile, cert: inter}}
	if cfg.intermediateKeyURI == "" {
		items = append(items, caItem{name: IntermediateKeyFile, key: interKey})
	}
	items = append(items, caItem{name: BundleSignerCertFile, cert: signer})
	if cfg.bundleSignerKeyURI == "" {
		items = append(items, caItem{name: BundleSignerKeyFile, key: signerKey})
	}
	files, err := encodeCAFiles(items)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range files {
			clear(f.data)
		}
	}()
	if err := writeCAFiles(dir, files); err != nil {
		return nil, err
	}
	return newCA(cfg, keys, root, inter, interKey, signer, signerKey), nil
}

func loadCA(dir string, cfg config) (_ *CA, err error) {
	keys := new(caKeys)
	defer func() {
		if err != nil {
			keys.close()
		}
	}()
	root, err := loadCertificate(dir, RootCertFile)
	if err != nil {
		return nil, err
	}
	// The root key may be offline (only RotateIntermediate signs with
	// it); when it is here, it must match.
	var rootKey crypto.Signer
	if _, err := os.Lstat(filepath.Join(dir, RootKeyFile)); err == nil {
		if rootKey, err = loadKey(dir, RootKeyFile); err != nil {
			return nil, err
		}
	}
	inter, err := loadCertificate(dir, IntermediateCertFile)
	if err != nil {
		return nil, err
	}
	interKey, err := keys.loadOrOpen(dir, IntermediateKeyFile, cfg.intermediateKeyURI)
	if err != nil {
		return nil, err
	}
	signer, err := loadCertificate(dir, BundleSignerCertFile)
	if err != nil {
		return nil, err
	}
	signerKey, err := keys.loadOrOpen(dir, BundleSignerKeyFile, cfg.bundleSignerKeyURI)
	if err != nil {
		return nil, err
	}

	// Check that the files form one CA. Each step names what is wrong.
	checks := []struct {
		ok   bool
		what string
	}{
		{root.IsCA && root.CheckSignatureFrom(root) == nil, RootCertFile + " is not a self-signed CA certificate"},
		{rootKey == nil || keyutil.VerifyPair(root.PublicKey, rootKey) == nil, RootKeyFile + " does not match " + RootCertFile},
		{inter.IsCA && inter.CheckSignatureFrom(root) == nil, IntermediateCertFile + " is not a CA certificate signed by " + RootCertFile},
		{keyutil.VerifyPair(inter.PublicKey, interKey) == nil, keyName(IntermediateKeyFile, cfg.intermediateKeyURI) + " does not match " + IntermediateCertFile},
		{!signer.IsCA && signer.CheckSignatureFrom(inter) == nil, BundleSignerCertFile + " is not a leaf certificate signed by " + IntermediateCertFile},
		{isBundleSigner(signer), BundleSignerCertFile + " is not an ECDSA P-256 code-signing certificate"},
		{keyutil.VerifyPair(signer.PublicKey, signerKey) == nil, keyName(BundleSignerKeyFile, cfg.bundleSignerKeyURI) + " does not match " + BundleSignerCertFile},
	}
	for _, c := range checks {
		if !c.ok {
			return nil, fmt.Errorf("%w: in %s: %s", ErrCACorrupt, dir, c.what)
		}
	}
	retired, unmatched, err := loadRetired(dir, cfg, keys, root, inter)
	if err != nil {
		return nil, err
	}
	ca := newCA(cfg, keys, root, inter, interKey, signer, signerKey)
	ca.retired, ca.unmatchedRetiredURIs = retired, unmatched
	return ca, nil
}

func newCA(cfg config, keys *caKeys, root, inter *x509.Certificate, interKey crypto.Signer, signer *x509.Certificate, signerKey crypto.Signer) *CA {
	return &CA{
		trustDomain:     cfg.trustDomain,
		now:             cfg.now,
		kms:             keys.kms,
		root:            root,
		intermediate:    inter,
		intermediateKey: interKey,
		bundleSigner:    signer,
		bundleKey:       signerKey,
	}
}

// caKeys collects the KMS connections opened while creating or loading a
// CA, so a failure closes them.
type caKeys struct{ kms []*kmsKey }

// newOrOpen opens the key rawURI names, or generates a P-256 key when it
// is "".
func (k *caKeys) newOrOpen(rawURI string) (crypto.Signer, error) {
	if rawURI == "" {
		return newP256Key()
	}
	key, err := openKMSKey(rawURI)
	if err != nil {
		return nil, err
	}
	k.kms = append(k.kms, key)
	return key.signer, nil
}

// loadOrOpen opens the key rawURI names, or loads the key file name from
// dir when it is "".
func (k *caKeys) loadOrOpen(dir, name, rawURI string) (crypto.Signer, error) {
	if rawURI == "" {
		return loadKey(dir, name)
	}
	return k.newOrOpen(rawURI)
}

func (k *caKeys) close() {
	for _, key := range k.kms {
		_ = key.manager.Close()
	}
}

// Close closes the CA's KMS connections (a no-op for keys in files and
// softkms). The CA must not be used afterwards.
func (ca *CA) Close() error {
	var errs []error
	for _, key := range ca.kms {
		if err := key.manager.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing kms of %s: %w", redactURI(key.uri), err))
		}
	}
	return errors.Join(errs...)
}

// keyName names a key in errors: its file, or its KMS URI without secrets.
func keyName(file, rawURI string) string {
	if rawURI == "" {
		return file
	}
	return "the key at " + redactURI(rawURI)
}

func isP256(pub crypto.PublicKey) bool {
	k, ok := pub.(*ecdsa.PublicKey)
	return ok && k.Curve == elliptic.P256()
}

// isBundleSigner reports whether cert has the bundle-signing profile
// VerifyBundle requires of an x5c leaf.
func isBundleSigner(cert *x509.Certificate) bool {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	return ok && pub.Curve == elliptic.P256() &&
		!cert.IsCA &&
		cert.KeyUsage&x509.KeyUsageDigitalSignature != 0 &&
		slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageCodeSigning)
}

func newP256Key() (crypto.Signer, error) {
	key, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return nil, fmt.Errorf("generating key: %w", err)
	}
	return key, nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Root returns the root certificate. Callers must not modify it.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// RootPool returns a new pool holding only the root certificate, for
// verifying device and server certificates and config bundles.
func (ca *CA) RootPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.root)
	return pool
}

// Intermediate returns the intermediate certificate that signs device and
// server certificates. Callers must not modify it.
func (ca *CA) Intermediate() *x509.Certificate { return ca.intermediate }

// BundleSigner returns the certificate whose key signs config bundles.
// Callers must not modify it.
func (ca *CA) BundleSigner() *x509.Certificate { return ca.bundleSigner }

// TrustDomain returns the trust domain of the device URIs this CA issues.
func (ca *CA) TrustDomain() string { return ca.trustDomain }

// String describes the CA without its keys.
func (ca *CA) String() string {
	return fmt.Sprintf("pki.CA{trust domain %s, root serial %x, root expires %s}",
		ca.trustDomain, ca.root.SerialNumber, ca.root.NotAfter.UTC().Format(time.RFC3339))
}

// Format makes every fmt verb (%v, %+v, %#v, %d, ...) print String, so that
// logging a CA can never print its keys.
func (ca *CA) Format(f fmt.State, _ rune) {
	_, _ = io.WriteString(f, ca.String())
}
