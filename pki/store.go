package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"go.step.sm/crypto/pemutil"
)

// The files of a CA directory.
const (
	RootCertFile         = "root_ca.crt"
	RootKeyFile          = "root_ca.key"
	IntermediateCertFile = "intermediate_ca.crt"
	IntermediateKeyFile  = "intermediate_ca.key"
	BundleSignerCertFile = "bundle_signer.crt"
	BundleSignerKeyFile  = "bundle_signer.key"
)

// File and directory modes. Keys are readable by the owner only;
// certificates are public.
const (
	dirMode  fs.FileMode = 0o700
	keyMode  fs.FileMode = 0o600
	certMode fs.FileMode = 0o644
)

// caFileNames lists the CA files in the order they are written and
// reported: all six, less the key files whose keys cfg keeps in a KMS.
func caFileNames(cfg config) []string {
	names := []string{RootCertFile, RootKeyFile, IntermediateCertFile}
	if cfg.intermediateKeyURI == "" {
		names = append(names, IntermediateKeyFile)
	}
	names = append(names, BundleSignerCertFile)
	if cfg.bundleSignerKeyURI == "" {
		names = append(names, BundleSignerKeyFile)
	}
	return names
}

// inspectDir reports which of the CA files cfg expects exist in dir. A
// missing dir has none. A key file next to a KMS URI for the same key is
// an error (ErrOptions): a key lives in one place.
func inspectDir(dir string, cfg config) (present, missing []string, err error) {
	for _, kms := range []struct{ uri, file string }{{cfg.intermediateKeyURI, IntermediateKeyFile}, {cfg.bundleSignerKeyURI, BundleSignerKeyFile}} {
		if kms.uri == "" {
			continue
		}
		if _, err := os.Lstat(filepath.Join(dir, kms.file)); err == nil {
			return nil, nil, fmt.Errorf("%w: %s holds %s, and its key URI names a KMS key; a key lives in one place: move the file into the KMS (and off this disk), or drop the URI",
				ErrOptions, dir, kms.file)
		}
	}
	for _, name := range caFileNames(cfg) {
		_, err := os.Lstat(filepath.Join(dir, name))
		switch {
		case err == nil:
			present = append(present, name)
		case errors.Is(err, fs.ErrNotExist):
			missing = append(missing, name)
		default:
			return nil, nil, fmt.Errorf("checking ca file: %w", err)
		}
	}
	return present, missing, nil
}

// readCAFile reads one CA file, at most MaxCAFileBytes. A key file must not
// be accessible to group or others.
func readCAFile(dir, name string, isKey bool) ([]byte, error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening ca file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("checking ca file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrCACorrupt, path)
	}
	if perm := fi.Mode().Perm(); isKey && perm&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s has mode %#o; run chmod 600 %s", ErrKeyPermissions, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxCAFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading ca file %s: %w", path, err)
	}
	if len(data) > MaxCAFileBytes {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrCACorrupt, path, MaxCAFileBytes)
	}
	return data, nil
}

func loadCertificate(dir, name string) (*x509.Certificate, error) {
	data, err := readCAFile(dir, name, false)
	if err != nil {
		return nil, err
	}
	v, err := pemutil.Parse(data, pemutil.WithFilename(name))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCACorrupt, err)
	}
	cert, ok := v.(*x509.Certificate)
	if !ok {
		return nil, fmt.Errorf("%w: %s holds a %T, not a certificate", ErrCACorrupt, name, v)
	}
	return cert, nil
}

func loadKey(dir, name string) (crypto.Signer, error) {
	data, err := readCAFile(dir, name, true)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	// pemutil would ask its global password prompter for an encrypted key;
	// a server must not block on a prompt.
	if bytes.Contains(data, []byte("ENCRYPTED")) {
		return nil, fmt.Errorf("%w: %s is encrypted; pki needs an unencrypted key file of mode 0600", ErrCACorrupt, name)
	}
	v, err := pemutil.Parse(data, pemutil.WithFilename(name))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCACorrupt, err)
	}
	key, ok := v.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %s holds a %T, not a private key", ErrCACorrupt, name, v)
	}
	return key, nil
}

// caFile is one file to write when creating a CA.
type caFile struct {
	name string
	data []byte
	perm fs.FileMode
}

// caItem is a certificate or a key to store as a CA file.
type caItem struct {
	name string
	cert *x509.Certificate
	key  crypto.Signer
}

// encodeCAFiles PEM-encodes certificates (mode 0644) and keys (mode 0600).
func encodeCAFiles(items []caItem) ([]caFile, error) {
	var files []caFile
	for _, it := range items {
		f := caFile{name: it.name, perm: certMode}
		var in any = it.cert
		if it.key != nil {
			f.perm, in = keyMode, it.key
		}
		block, err := pemutil.Serialize(in)
		if err != nil {
			// The error names the file, never the key.
			return nil, fmt.Errorf("encoding %s: %w", f.name, err)
		}
		f.data = pem.EncodeToMemory(block)
		if it.key != nil {
			clear(block.Bytes) // a copy of the key's DER; a certificate's block aliases cert.Raw
		}
		files = append(files, f)
	}
	return files, nil
}

// writeCAFiles publishes files into dir, each atomically and without
// replacing an existing file. If one fails, the files this call published
// are removed again, so a failed creation leaves no partial CA behind.
func writeCAFiles(dir string, files []caFile) (err error) {
	var published []string
	defer func() {
		if err != nil {
			for _, p := range published {
				_ = os.Remove(p)
			}
		}
	}()
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if err := publishFile(path, f.data, f.perm); err != nil {
			return err
		}
		published = append(published, path)
	}
	return syncDir(dir)
}

// publishFile writes data to a temporary file next to path, fsyncs it and
// then hard-links it to path. Unlike rename, link fails if path exists, so a
// concurrent or earlier CA creation is never overwritten.
func publishFile(path string, data []byte, perm fs.FileMode) error {
	dir, name := filepath.Split(path)
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("creating temporary file for %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("setting mode of %s: %w", name, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", name, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s appeared while the ca was being created; is another process creating it?", ErrCAIncomplete, path)
		}
		return fmt.Errorf("publishing %s: %w", name, err)
	}
	return nil
}

// syncDir makes the directory entries created in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening ca directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing ca directory: %w", err)
	}
	return nil
}
