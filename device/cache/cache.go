// Package cache is the device agent's on-disk state: one bbolt file holding
// the TPM-wrapped AK and key blobs (encrypted by the TPM's storage root
// key, useless off this TPM), the public certificate chain, the verified
// config bundle, the highest bundle version ever accepted, and the phase of
// an enrollment in progress.
//
// It never holds a secret in the clear: there is nothing secret to hold.
// A corrupt file is detected at Open, moved aside and replaced by an empty
// one: the agent then enrolls again, its identity being its TPM.
package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrNotFound: the cache has no such record yet.
var ErrNotFound = errors.New("cache: not found")

// ErrLocked: another agent holds the cache file.
var ErrLocked = errors.New("cache: locked by another agent process")

var (
	bucketAgent = []byte("agent")

	keyIdentity   = []byte("identity")
	keyEnrollment = []byte("enrollment")
	keyMaxBundle  = []byte("max_bundle_version")
	keyPending    = []byte("pending_session")
)

// lockTimeout bounds the wait for another agent's lock on the file.
const lockTimeout = 2 * time.Second

// errCorrupt marks an open failure that moving the file aside cures. Other
// failures (the path is a directory, permission denied, a read-only or full
// disk, I/O errors) are not: moving a sound cache aside would lose it and
// reset its bundle rollback floor.
var errCorrupt = errors.New("corrupt")

// Identity is the agent's TPM identity: blobs the TPM wrapped under its
// storage root key, loadable only into the TPM that made them.
type Identity struct {
	DeviceID string `json:"device_id"`
	AKBlob   []byte `json:"ak_blob"`
	KeyBlob  []byte `json:"key_blob"`
}

// Enrollment is the result of the last successful enrollment.
type Enrollment struct {
	DeviceID string `json:"device_id"`
	// CertificateChain is DER, leaf first, root excluded.
	CertificateChain [][]byte  `json:"certificate_chain"`
	NotAfter         time.Time `json:"not_after"`
	Bundle           string    `json:"bundle"`
	BundleVersion    uint64    `json:"bundle_version"`
	EnrolledAt       time.Time `json:"enrolled_at"`
}

// PendingSession is an enrollment begun but not finished: the server's
// challenge (public: the credential is encrypted to the EK) so that an agent
// restarted between begin and finish answers it instead of starting over.
type PendingSession struct {
	CorrelationID string          `json:"correlation_id"`
	Begin         json.RawMessage `json:"begin"`
	// Finish is the answer once computed, resent byte for byte on retry so
	// the server's idempotent finish returns the same certificate. It
	// holds no secret: the activation proof is an HMAC bound to this
	// session, and useless once the session is consumed or expired.
	Finish    json.RawMessage `json:"finish,omitempty"`
	ExpiresAt time.Time       `json:"expires_at"`
}

// Cache is the agent's bbolt file.
type Cache struct {
	db *bolt.DB
}

// Open opens or creates the cache file (mode 0600). A file that is not a
// sound bbolt database is renamed to path.corrupt-<unix time> and a fresh
// one created; the returned moved path is then non-empty so the caller can
// report it.
func Open(path string) (c *Cache, moved string, err error) {
	c, err = open(path)
	if err == nil || !errors.Is(err, errCorrupt) {
		return c, "", err
	}
	moved = fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
	if rerr := os.Rename(path, moved); rerr != nil {
		return nil, "", fmt.Errorf("agent cache %s is unreadable (%v) and could not be moved aside: %w", path, err, rerr)
	}
	c, err = open(path)
	if err != nil {
		return nil, moved, err
	}
	return c, moved, nil
}

// open opens path and checks its consistency; bbolt can panic on some
// corruptions, which is turned into an error here.
func open(path string) (c *Cache, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("agent cache %s is %w: %v", path, errCorrupt, r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", ErrLocked, path)
	}
	var pathErr *fs.PathError
	var errno syscall.Errno
	if errors.As(err, &pathErr) || errors.As(err, &errno) {
		return nil, fmt.Errorf("opening agent cache %s: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("agent cache %s is %w: %w", path, errCorrupt, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		var checkErr error
		for cerr := range tx.Check() { // drain: the checker stops when read to the end
			if checkErr == nil {
				checkErr = cerr
			}
		}
		if checkErr != nil {
			return fmt.Errorf("%w: %w", errCorrupt, checkErr)
		}
		b, err := tx.CreateBucketIfNotExists(bucketAgent)
		if err != nil {
			return err
		}
		// Every record must decode: a torn or foreign value is corruption.
		return b.ForEach(func(k, v []byte) error {
			if !json.Valid(v) {
				return fmt.Errorf("%w: record %q is not valid JSON", errCorrupt, k)
			}
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialising agent cache %s: %w", path, err)
	}
	return &Cache{db: db}, nil
}

// Close closes the file.
func (c *Cache) Close() error { return c.db.Close() }

// Identity returns the stored identity or ErrNotFound.
func (c *Cache) Identity() (*Identity, error) {
	var id Identity
	if err := c.get(keyIdentity, &id); err != nil {
		return nil, err
	}
	return &id, nil
}

// PutIdentity stores the identity.
func (c *Cache) PutIdentity(id *Identity) error { return c.put(keyIdentity, id) }

// Enrollment returns the last enrollment or ErrNotFound.
func (c *Cache) Enrollment() (*Enrollment, error) {
	var e Enrollment
	if err := c.get(keyEnrollment, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// HighestBundleVersion is the highest bundle version ever stored (0 if
// none).
func (c *Cache) HighestBundleVersion() (uint64, error) {
	var v uint64
	if err := c.get(keyMaxBundle, &v); err != nil && !errors.Is(err, ErrNotFound) {
		return 0, err
	}
	return v, nil
}

// PutEnrollment stores e and clears any pending session, in one
// transaction. The certificate is always taken; the bundle only if its
// version is at least the highest stored (equal refreshes the same version).
// Otherwise the stored bundle is kept and bundleAccepted is false: rollback
// protection never costs the device its new certificate.
func (c *Cache) PutEnrollment(e *Enrollment) (bundleAccepted bool, err error) {
	err = c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgent)
		var max uint64
		if raw := b.Get(keyMaxBundle); raw != nil {
			if err := json.Unmarshal(raw, &max); err != nil {
				return fmt.Errorf("decoding highest bundle version: %w", err)
			}
		}
		rec := *e
		bundleAccepted = e.BundleVersion >= max
		if !bundleAccepted {
			var prev Enrollment
			if raw := b.Get(keyEnrollment); raw != nil {
				if err := json.Unmarshal(raw, &prev); err != nil {
					return fmt.Errorf("decoding cached enrollment: %w", err)
				}
			}
			rec.Bundle, rec.BundleVersion = prev.Bundle, prev.BundleVersion
		} else {
			max = e.BundleVersion
		}
		mv, _ := json.Marshal(max)
		v, err := json.Marshal(&rec)
		if err != nil {
			return err
		}
		if err := b.Put(keyMaxBundle, mv); err != nil {
			return err
		}
		if err := b.Delete(keyPending); err != nil {
			return err
		}
		return b.Put(keyEnrollment, v)
	})
	return bundleAccepted, err
}

// PutBundle replaces only the bundle, under the same rollback rule; it
// returns false and keeps the old one for a lower version.
func (c *Cache) PutBundle(bundle string, version uint64) (bool, error) {
	accepted := false
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgent)
		var max uint64
		if raw := b.Get(keyMaxBundle); raw != nil {
			if err := json.Unmarshal(raw, &max); err != nil {
				return err
			}
		}
		raw := b.Get(keyEnrollment)
		if raw == nil || version < max {
			return nil
		}
		var e Enrollment
		if err := json.Unmarshal(raw, &e); err != nil {
			return err
		}
		e.Bundle, e.BundleVersion = bundle, version
		v, _ := json.Marshal(&e)
		mv, _ := json.Marshal(version)
		if err := b.Put(keyMaxBundle, mv); err != nil {
			return err
		}
		accepted = true
		return b.Put(keyEnrollment, v)
	})
	return accepted, err
}

// PendingSession returns the enrollment in progress or ErrNotFound.
func (c *Cache) PendingSession() (*PendingSession, error) {
	var p PendingSession
	if err := c.get(keyPending, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// PutPendingSession records a begun enrollment.
func (c *Cache) PutPendingSession(p *PendingSession) error { return c.put(keyPending, p) }

// ClearPendingSession forgets a begun enrollment.
func (c *Cache) ClearPendingSession() error {
	return c.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketAgent).Delete(keyPending) })
}

func (c *Cache) get(key []byte, v any) error {
	return c.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketAgent).Get(key)
		if raw == nil {
			return ErrNotFound
		}
		if err := json.Unmarshal(raw, v); err != nil {
			return fmt.Errorf("decoding cached %s: %w", key, err)
		}
		return nil
	})
}

func (c *Cache) put(key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	return c.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAgent).Put(key, raw)
	})
}
