package store_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/enrollserver/store/storetest"
)

func TestBolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(filepath.Join(t.TempDir(), "enroll.db"), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestBoltReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "enroll.db")
	s, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutPreregistrations(t.Context(), []*store.Preregistration{{DeviceID: "a", Serial: "SN1"}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if p, err := s.Preregistration(t.Context(), "a"); err != nil || p.Serial != "SN1" {
		t.Errorf("after reopen: %+v, %v", p, err)
	}
}

// TestBoltMigratesSchema1 opens a store written by the schema 1 build (no
// indexes) and finds its records through the schema 2 indexes.
func TestBoltMigratesSchema1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "enroll.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	put := func(tx *bolt.Tx, bucket, key string, v any) {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(v)
		if s, ok := v.(string); ok {
			raw = []byte(s)
		}
		if err := b.Put([]byte(key), raw); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		put(tx, "meta", "schema", "1")
		put(tx, "devices", "dev1", &store.Device{ID: "dev1", Status: store.StatusEnrolled})
		put(tx, "certificates", "c1", &store.IssuedCertificate{Serial: "c1", DeviceID: "dev1"})
		put(tx, "preregistrations", "dev1", &store.Preregistration{DeviceID: "dev1", Serial: "SN1"})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	var ids, serials []string
	s.DevicesByStatus(ctx, store.StatusEnrolled, "", func(d *store.Device) bool { ids = append(ids, d.ID); return true })
	s.Certificates(ctx, "dev1", "", func(c *store.IssuedCertificate) bool { serials = append(serials, c.Serial); return true })
	if len(ids) != 1 || len(serials) != 1 {
		t.Errorf("after migration: devices %v, certificates %v", ids, serials)
	}
	if err := s.PutPreregistrations(ctx, []*store.Preregistration{{DeviceID: "dev2", Serial: "SN1"}}); !errors.Is(err, store.ErrExists) {
		t.Errorf("serial of a migrated pre-registration taken over: %v", err)
	}
}

// TestBoltFreelistBothWays: a store written by a build that persisted
// bbolt's free-page list opens, takes writes that reuse freed pages, and
// opens again in that build's mode with every page accounted for.
func TestBoltFreelistBothWays(t *testing.T) {
	path := filepath.Join(t.TempDir(), "enroll.db")
	check := func(db *bolt.DB) {
		t.Helper()
		var errs []error
		db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() { // drained: the checker runs until it closes
				errs = append(errs, err)
			}
			return nil
		})
		if len(errs) > 0 {
			t.Fatalf("consistency check: %v", errors.Join(errs...))
		}
	}
	// Persisted freelist (bbolt's default), with freed pages on it.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 10_000)
	for i := range 20 {
		if err := db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("scratch"))
			if err != nil {
				return err
			}
			return b.Put([]byte{byte(i % 3)}, big) // rewrites free the old pages
		}); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	s, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for i := range 50 {
		if err := s.PutPreregistrations(ctx, []*store.Preregistration{{DeviceID: fmt.Sprintf("dev%d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	// The newest meta page records no persisted free list (bbolt's
	// pgidNoFreelist): it is rebuilt at every open.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pageSize := int(binary.LittleEndian.Uint32(raw[16+8:]))
	var freelist, txid uint64
	for _, off := range []int{0, pageSize} { // meta: header 16, magic..flags 16, root 16, freelist, pgid, txid
		if id := binary.LittleEndian.Uint64(raw[off+64:]); id >= txid {
			txid, freelist = id, binary.LittleEndian.Uint64(raw[off+48:])
		}
	}
	if freelist != math.MaxUint64 {
		t.Errorf("the store persisted its free list at page %d", freelist)
	}

	db, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	check(db)
	if err := db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket([]byte("preregistrations")).Stats().KeyN; n != 50 {
			return fmt.Errorf("%d pre-registrations, want 50", n)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
