// Package cache is the device agent's on-disk state: one bbolt file holding
// the TPM-wrapped AK and key blobs (encrypted by the TPM's storage root
// key, useless off this TPM), the public certificate chain, the verified
// config bundle and the highest bundle version ever accepted.
//
// It never holds a secret in the clear: there is nothing secret to hold.
package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrNotFound: the cache has no such record yet.
var ErrNotFound = errors.New("cache: not found")

// ErrRollback: a bundle's version is not above the highest one stored.
var ErrRollback = errors.New("cache: bundle version rollback")

var (
	bucketAgent = []byte("agent")

	keyIdentity   = []byte("identity")
	keyEnrollment = []byte("enrollment")
	keyMaxBundle  = []byte("max_bundle_version")
)

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

// Cache is the agent's bbolt file.
type Cache struct {
	db *bolt.DB
}

// Open opens or creates the cache file (mode 0600).
func Open(path string) (*Cache, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("opening agent cache %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketAgent)
		return err
	}); err != nil {
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

// PutEnrollment stores e. The bundle version must be at least the highest
// stored (equal re-stores the same bundle after a re-enrollment);
// otherwise it returns ErrRollback and keeps what it has.
func (c *Cache) PutEnrollment(e *Enrollment) error {
	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encoding enrollment: %w", err)
	}
	return c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgent)
		var max uint64
		if raw := b.Get(keyMaxBundle); raw != nil {
			if err := json.Unmarshal(raw, &max); err != nil {
				return fmt.Errorf("decoding highest bundle version: %w", err)
			}
		}
		if e.BundleVersion < max {
			return fmt.Errorf("%w: offered version %d, highest accepted %d", ErrRollback, e.BundleVersion, max)
		}
		mv, _ := json.Marshal(e.BundleVersion)
		if err := b.Put(keyMaxBundle, mv); err != nil {
			return err
		}
		return b.Put(keyEnrollment, v)
	})
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
