package store_test

import (
	"path/filepath"
	"testing"

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
