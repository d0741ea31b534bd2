package store_test

import (
	"encoding/json"
	"errors"
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
