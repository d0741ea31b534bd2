package pki

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/x509util"

	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
)

// ArchiveDir is the directory inside a CA directory where
// RotateIntermediate keeps the files it replaces, one subdirectory per
// rotation named by its UTC time.
const ArchiveDir = "archive"

// RotateOptions describe the intermediate and bundle signer that
// RotateIntermediate creates.
type RotateOptions struct {
	// IntermediateKeyURI names the new intermediate's key in a KMS (see
	// Options); "" generates a new P-256 key into intermediate_ca.key. It
	// must not be the current intermediate's key.
	IntermediateKeyURI string
	// BundleSignerKeyURI names the bundle signer's key in a KMS; it may be
	// the current one, which is then certified again under the new
	// intermediate. "" generates a new P-256 key into bundle_signer.key.
	BundleSignerKeyURI string
	// IntermediateLifetime of the new intermediate; 0 means
	// DefaultIntermediateLifetime. It never outlives the root.
	IntermediateLifetime time.Duration
}

// Rotation reports what RotateIntermediate did.
type Rotation struct {
	// OldIntermediate and NewIntermediate are the intermediates before and
	// after; likewise the bundle signers.
	OldIntermediate, NewIntermediate *x509.Certificate
	OldBundleSigner, NewBundleSigner *x509.Certificate
	// Archive is the directory holding the replaced files.
	Archive string
}

// RotateIntermediate gives the CA in dir a new intermediate, signed by the
// unchanged root, and a new bundle-signer certificate under it; the root and
// its key stay as they are. opts says how to load the CA as it is now (its
// key URIs, clock); next describes the new keys. The new certificates keep
// the old subjects, so a CRL signed by the new intermediate names the same
// issuer.
//
// Nothing on devices changes: they trust the root. Certificates issued
// before the rotation keep verifying until they expire (their chains carry
// the old intermediate, which is not revoked), cached bundles signed by the
// old bundle signer too; a CA loaded afterwards issues leaves and signs
// bundles with the new intermediate. A running enrolld keeps the old CA in
// memory until it restarts. CRLs are signed by both (SignCRLs): the old
// intermediate's certificates need a CRL from their own issuer.
//
// The replaced files are first hard-linked into dir/archive/<UTC time>/
// (keys stay 0600 there; keep the old intermediate's key until the
// certificates it issued have expired, MaxLeafLifetime after every enrolld
// restarted, since it signs their CRL; an old key in a KMS is named by
// Options.RetiredIntermediateKeyURIs), then each
// new file atomically replaces its old one. A crash in
// between leaves a directory that LoadOrCreateCA refuses (ErrCACorrupt),
// never one it misuses; copying the archived files back restores the old
// CA.
func RotateIntermediate(dir string, opts *Options, next *RotateOptions) (_ *Rotation, err error) {
	cfg, err := buildConfig(opts)
	if err != nil {
		return nil, err
	}
	if next == nil {
		next = &RotateOptions{}
	}
	if err := validateKeyURI("new intermediate key URI", next.IntermediateKeyURI); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if err := validateKeyURI("new bundle signer key URI", next.BundleSignerKeyURI); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if next.IntermediateLifetime < 0 {
		return nil, fmt.Errorf("%w: intermediate lifetime %s is negative; use 0 for the default", ErrOptions, next.IntermediateLifetime)
	}

	// 1. The CA as it is: complete and consistent.
	present, missing, err := inspectDir(dir, cfg)
	if err != nil {
		return nil, err
	}
	switch {
	case len(present) == 0:
		return nil, fmt.Errorf("%w: %s holds no CA; check the directory (and key URIs)", ErrCAIncomplete, dir)
	case len(missing) == 1 && missing[0] == RootKeyFile:
		return nil, fmt.Errorf("%w: the root key is offline (%s is not in %s): put it back for the rotation, 0600, and take it offline again afterwards",
			ErrCAIncomplete, RootKeyFile, dir)
	case len(missing) > 0:
		return nil, fmt.Errorf("%w: %s has %s but is missing %s; rotation needs a complete CA",
			ErrCAIncomplete, dir, strings.Join(present, ", "), strings.Join(missing, ", "))
	}
	old, err := loadCA(dir, cfg)
	if err != nil {
		return nil, err
	}
	defer old.Close()
	rootKey, err := loadKey(dir, RootKeyFile)
	if err != nil {
		return nil, err
	}
	now := cfg.now()
	root := old.root
	if now.Before(root.NotBefore) || !now.Before(root.NotAfter.Add(-MinLeafLifetime)) {
		return nil, fmt.Errorf("%w: the root is valid from %s to %s and now is %s; a new intermediate cannot outlive it: create a new CA",
			ErrCAExpired, root.NotBefore.UTC().Format(time.RFC3339), root.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}

	// 2. The new keys.
	keys := new(caKeys)
	defer keys.close() // the new CA is loaded from disk by its user
	interKey, err := keys.newOrOpen(next.IntermediateKeyURI)
	if err != nil {
		return nil, err
	}
	if keyutil.Equal(old.intermediate.PublicKey, interKey.Public()) {
		return nil, fmt.Errorf("%w: the new intermediate key is the current one; create a new key for the rotation", ErrOptions)
	}
	signerKey, err := keys.newOrOpen(next.BundleSignerKeyURI)
	if err != nil {
		return nil, err
	}
	if !isP256(signerKey.Public()) {
		return nil, fmt.Errorf("%w: the bundle signer key is a %T; bundles are signed with ES256, give an ECDSA P-256 key", ErrKMS, signerKey.Public())
	}

	// 3. The new certificates, with the old subjects.
	lifetime := next.IntermediateLifetime
	if lifetime == 0 {
		lifetime = DefaultIntermediateLifetime
	}
	notBefore, notAfter := now.Add(-Backdate), minTime(now.Add(lifetime), root.NotAfter)
	interTmpl := intermediateProfile(cfg.trustDomain, interKey.Public(), notBefore, notAfter)
	interTmpl.RawSubject = old.intermediate.RawSubject
	inter, err := x509util.CreateCertificate(interTmpl, root, interKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("creating intermediate certificate: %w", err)
	}
	signerTmpl := bundleSignerProfile(cfg.trustDomain, signerKey.Public(), notBefore, notAfter)
	signerTmpl.RawSubject = old.bundleSigner.RawSubject
	signer, err := x509util.CreateCertificate(signerTmpl, inter, signerKey.Public(), interKey)
	if err != nil {
		return nil, fmt.Errorf("creating bundle signer certificate: %w", err)
	}
	items := []caItem{{name: IntermediateCertFile, cert: inter}, {name: BundleSignerCertFile, cert: signer}}
	if next.IntermediateKeyURI == "" {
		items = append(items, caItem{name: IntermediateKeyFile, key: interKey})
	}
	if next.BundleSignerKeyURI == "" {
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

	// 4. Archive, then replace.
	archive := filepath.Join(dir, ArchiveDir, now.UTC().Format(archiveTimeLayout))
	if err := os.MkdirAll(filepath.Dir(archive), dirMode); err != nil {
		return nil, fmt.Errorf("creating archive directory: %w", err)
	}
	if err := os.Mkdir(archive, dirMode); err != nil {
		return nil, fmt.Errorf("creating archive directory (one rotation per second): %w", err)
	}
	for _, name := range []string{IntermediateCertFile, IntermediateKeyFile, BundleSignerCertFile, BundleSignerKeyFile} {
		if err := os.Link(filepath.Join(dir, name), filepath.Join(archive, name)); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("archiving %s: %w", name, err)
		}
	}
	if err := syncDir(archive); err != nil {
		return nil, err
	}
	for _, f := range files {
		if err := atomicfile.Write(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return nil, fmt.Errorf("%w; the rotation is half done: copy the files of %s back into %s to restore the old CA", err, archive, dir)
		}
	}
	// A key that moved into a KMS leaves no file behind (it is archived).
	for _, moved := range []struct{ uri, file string }{{next.IntermediateKeyURI, IntermediateKeyFile}, {next.BundleSignerKeyURI, BundleSignerKeyFile}} {
		if moved.uri != "" {
			if err := os.Remove(filepath.Join(dir, moved.file)); err != nil && !os.IsNotExist(err) {
				return nil, fmt.Errorf("removing %s, now in the kms: %w", moved.file, err)
			}
		}
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return &Rotation{
		OldIntermediate: old.intermediate, NewIntermediate: inter,
		OldBundleSigner: old.bundleSigner, NewBundleSigner: signer,
		Archive: archive,
	}, nil
}
