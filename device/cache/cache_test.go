package cache_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/edgeenroll/edgeenroll/device/cache"
)

// openCache opens a cache at path, which must not need moving aside, and
// on cleanup closes it and runs bbolt's consistency check over the file.
func openCache(t *testing.T, path string) *cache.Cache {
	t.Helper()
	c, moved, err := cache.Open(path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	if moved != "" {
		t.Fatalf("Open(%s) moved the file aside to %s", path, moved)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		checkConsistent(t, path)
	})
	return c
}

func checkConsistent(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Errorf("reopening %s for the consistency check: %v", path, err)
		return
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("bbolt consistency check: %v", err)
		}
		return nil
	}); err != nil {
		t.Errorf("consistency check: %v", err)
	}
}

func newPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "agent.db")
}

func identity() *cache.Identity {
	return &cache.Identity{
		DeviceID: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		AKBlob:   []byte{0x00, 0x01, 0xfe, 0xff, 'a', 'k'},
		KeyBlob:  []byte("wrapped key blob"),
	}
}

var enrolledAt = time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)

func enrollment(version uint64, bundle string) *cache.Enrollment {
	return &cache.Enrollment{
		DeviceID:         identity().DeviceID,
		CertificateChain: [][]byte{[]byte("leaf DER"), []byte("intermediate DER")},
		NotAfter:         enrolledAt.Add(90 * 24 * time.Hour),
		Bundle:           bundle,
		BundleVersion:    version,
		EnrolledAt:       enrolledAt,
	}
}

// reenrollment is a later enrollment: a new certificate and the bundle
// the server sent with it.
func reenrollment(version uint64, bundle string) *cache.Enrollment {
	e := enrollment(version, bundle)
	e.CertificateChain = [][]byte{[]byte("new leaf DER"), []byte("intermediate DER")}
	e.EnrolledAt = enrolledAt.Add(24 * time.Hour)
	e.NotAfter = e.EnrolledAt.Add(90 * 24 * time.Hour)
	return e
}

func pending() *cache.PendingSession {
	return &cache.PendingSession{
		CorrelationID: "corr-1",
		Begin:         json.RawMessage(`{"session_id":"0123456789abcdef0123456789abcdef"}`),
		ExpiresAt:     enrolledAt.Add(2 * time.Minute),
	}
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	path := newPath(t)
	openCache(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("cache file mode = %v, want -rw-------", got)
	}
}

// TestOpenRefusesWithoutMovingAside: failures that are not corruption
// leave the path alone.
func TestOpenRefusesWithoutMovingAside(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T) string
	}{
		{"missing directory", func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing", "agent.db") }},
		{"path is a directory", func(t *testing.T) string {
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "keep"), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.setup(t)
			before := listDir(t, filepath.Dir(path))
			c, moved, err := cache.Open(path)
			if err == nil {
				c.Close()
				t.Fatalf("Open(%s) succeeded", path)
			}
			if moved != "" {
				t.Errorf("Open moved %s aside to %s", path, moved)
			}
			if diff := cmp.Diff(before, listDir(t, filepath.Dir(path))); diff != "" {
				t.Errorf("Open changed the parent directory (-before, +after):\n%s", diff)
			}
		})
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestOpenMovesCorruptFileAside: a file that is not a sound cache is
// renamed aside, byte for byte, and replaced by an empty cache.
func TestOpenMovesCorruptFileAside(t *testing.T) {
	for _, tt := range []struct {
		name  string
		write func(t *testing.T, path string)
	}{
		{"zeros", func(t *testing.T, path string) { writeFile(t, path, make([]byte, 16384)) }},
		{"text", func(t *testing.T, path string) {
			writeFile(t, path, []byte(strings.Repeat("not a bbolt file\n", 1000)))
		}},
		{"truncated bbolt file", func(t *testing.T, path string) {
			c := openCache2(t, path)
			if err := c.PutIdentity(identity()); err != nil {
				t.Fatal(err)
			}
			c.Close()
			if err := os.Truncate(path, 4096); err != nil {
				t.Fatal(err)
			}
		}},
		{"record that is not JSON", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("agent"))
				if err != nil {
					return err
				}
				return b.Put([]byte("identity"), []byte{0xde, 0xad})
			}); err != nil {
				t.Fatal(err)
			}
			db.Close()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := newPath(t)
			tt.write(t, path)
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			c, moved, err := cache.Open(path)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer c.Close()
			if !strings.HasPrefix(moved, path+".corrupt-") {
				t.Fatalf("moved = %q, want %s.corrupt-<time>", moved, path)
			}
			if got, err := os.ReadFile(moved); err != nil || string(got) != string(orig) {
				t.Errorf("moved-aside file differs from the original (err %v)", err)
			}
			if _, err := c.Identity(); !errors.Is(err, cache.ErrNotFound) {
				t.Errorf("Identity() in the fresh cache: %v, want ErrNotFound", err)
			}
		})
	}
}

// openCache2 opens a cache the test closes itself.
func openCache2(t *testing.T, path string) *cache.Cache {
	t.Helper()
	c, _, err := cache.Open(path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	return c
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestEmptyCache(t *testing.T) {
	c := openCache(t, newPath(t))
	if id, err := c.Identity(); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("Identity() = %v, %v; want ErrNotFound", id, err)
	}
	if e, err := c.Enrollment(); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("Enrollment() = %v, %v; want ErrNotFound", e, err)
	}
	if p, err := c.PendingSession(); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("PendingSession() = %v, %v; want ErrNotFound", p, err)
	}
	if v, err := c.HighestBundleVersion(); err != nil || v != 0 {
		t.Errorf("HighestBundleVersion() = %d, %v; want 0, nil", v, err)
	}
	if ok, err := c.PutBundle("b", 1); err != nil || ok {
		t.Errorf("PutBundle with no enrollment = %v, %v; want false, nil", ok, err)
	}
	if err := c.ClearPendingSession(); err != nil {
		t.Errorf("ClearPendingSession on an empty cache: %v", err)
	}
}

func TestIdentityRoundTrip(t *testing.T) {
	c := openCache(t, newPath(t))
	want := identity()
	if err := c.PutIdentity(want); err != nil {
		t.Fatalf("PutIdentity: %v", err)
	}
	got, err := c.Identity()
	if err != nil {
		t.Fatalf("Identity: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Identity mismatch (-want, +got):\n%s", diff)
	}

	// A new identity (say after a TPM clear) replaces the old one.
	want.AKBlob, want.KeyBlob = []byte("new ak"), []byte("new key")
	if err := c.PutIdentity(want); err != nil {
		t.Fatalf("PutIdentity again: %v", err)
	}
	got, err = c.Identity()
	if err != nil {
		t.Fatalf("Identity: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("replaced Identity mismatch (-want, +got):\n%s", diff)
	}
	if _, err := c.Enrollment(); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("Enrollment() after PutIdentity: %v, want ErrNotFound", err)
	}
}

func TestEnrollmentRoundTrip(t *testing.T) {
	c := openCache(t, newPath(t))
	want := enrollment(3, "header.payload.signature")
	if ok, err := c.PutEnrollment(want); err != nil || !ok {
		t.Fatalf("PutEnrollment = %v, %v; want true, nil", ok, err)
	}
	got, err := c.Enrollment()
	if err != nil {
		t.Fatalf("Enrollment: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Enrollment mismatch (-want, +got):\n%s", diff)
	}
	if v, err := c.HighestBundleVersion(); err != nil || v != 3 {
		t.Errorf("HighestBundleVersion() = %d, %v; want 3, nil", v, err)
	}
}

func TestPendingSession(t *testing.T) {
	c := openCache(t, newPath(t))
	want := pending()
	if err := c.PutPendingSession(want); err != nil {
		t.Fatalf("PutPendingSession: %v", err)
	}
	got, err := c.PendingSession()
	if err != nil {
		t.Fatalf("PendingSession: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("PendingSession mismatch (-want, +got):\n%s", diff)
	}
	if err := c.ClearPendingSession(); err != nil {
		t.Fatalf("ClearPendingSession: %v", err)
	}
	if _, err := c.PendingSession(); !errors.Is(err, cache.ErrNotFound) {
		t.Errorf("PendingSession() after clear: %v, want ErrNotFound", err)
	}

	// Finishing the enrollment clears the pending session, even when the
	// bundle is refused.
	for _, version := range []uint64{5, 4} {
		if err := c.PutPendingSession(pending()); err != nil {
			t.Fatalf("PutPendingSession: %v", err)
		}
		if _, err := c.PutEnrollment(enrollment(version, "b")); err != nil {
			t.Fatalf("PutEnrollment(v%d): %v", version, err)
		}
		if _, err := c.PendingSession(); !errors.Is(err, cache.ErrNotFound) {
			t.Errorf("PendingSession() after PutEnrollment(v%d): %v, want ErrNotFound", version, err)
		}
	}
}

func TestPutEnrollmentBundleVersions(t *testing.T) {
	for _, tt := range []struct {
		name       string
		first      uint64
		second     uint64
		wantAccept bool
	}{
		{"higher version", 5, 6, true},
		{"equal version", 5, 5, true},
		{"version zero twice", 0, 0, true},
		{"lower version", 5, 4, false},
		{"zero after a version", 1, 0, false},
		{"far lower version", 1 << 63, 1, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := openCache(t, newPath(t))
			first := enrollment(tt.first, "first bundle")
			if ok, err := c.PutEnrollment(first); err != nil || !ok {
				t.Fatalf("first PutEnrollment = %v, %v; want true, nil", ok, err)
			}
			second := reenrollment(tt.second, "second bundle")
			ok, err := c.PutEnrollment(second)
			if err != nil {
				t.Fatalf("second PutEnrollment: %v", err)
			}
			if ok != tt.wantAccept {
				t.Errorf("second PutEnrollment accepted the bundle = %v, want %v", ok, tt.wantAccept)
			}
			// The new certificate is always kept; a refused (rolled back)
			// bundle leaves the old bundle and version in place.
			want := *second
			wantFloor := tt.second
			if !tt.wantAccept {
				want.Bundle, want.BundleVersion = first.Bundle, first.BundleVersion
				wantFloor = tt.first
			}
			got, err := c.Enrollment()
			if err != nil {
				t.Fatalf("Enrollment: %v", err)
			}
			if diff := cmp.Diff(&want, got); diff != "" {
				t.Errorf("stored enrollment (-want, +got):\n%s", diff)
			}
			if v, err := c.HighestBundleVersion(); err != nil || v != wantFloor {
				t.Errorf("HighestBundleVersion() = %d, %v; want %d", v, err, wantFloor)
			}
		})
	}
}

func TestPutBundle(t *testing.T) {
	for _, tt := range []struct {
		name       string
		version    uint64
		wantAccept bool
	}{
		{"higher version", 8, true},
		{"equal version", 7, true},
		{"lower version", 6, false},
		{"zero", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := openCache(t, newPath(t))
			base := enrollment(7, "v7")
			if _, err := c.PutEnrollment(base); err != nil {
				t.Fatalf("PutEnrollment: %v", err)
			}
			ok, err := c.PutBundle("pushed", tt.version)
			if err != nil || ok != tt.wantAccept {
				t.Fatalf("PutBundle(v%d) = %v, %v; want %v, nil", tt.version, ok, err, tt.wantAccept)
			}
			want := *base
			if tt.wantAccept {
				want.Bundle, want.BundleVersion = "pushed", tt.version
			}
			got, err := c.Enrollment()
			if err != nil {
				t.Fatalf("Enrollment: %v", err)
			}
			if diff := cmp.Diff(&want, got); diff != "" {
				t.Errorf("stored enrollment (-want, +got):\n%s", diff)
			}
		})
	}
}

func TestReopenKeepsData(t *testing.T) {
	path := newPath(t)
	c := openCache2(t, path)
	if err := c.PutIdentity(identity()); err != nil {
		t.Fatalf("PutIdentity: %v", err)
	}
	if _, err := c.PutEnrollment(enrollment(7, "v7")); err != nil {
		t.Fatalf("PutEnrollment: %v", err)
	}
	if err := c.PutPendingSession(pending()); err != nil {
		t.Fatalf("PutPendingSession: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := c.Identity(); err == nil {
		t.Error("Identity() on a closed cache succeeded")
	}
	checkConsistent(t, path)

	c = openCache(t, path)
	gotID, err := c.Identity()
	if err != nil {
		t.Fatalf("Identity after reopen: %v", err)
	}
	if diff := cmp.Diff(identity(), gotID); diff != "" {
		t.Errorf("Identity after reopen (-want, +got):\n%s", diff)
	}
	gotE, err := c.Enrollment()
	if err != nil {
		t.Fatalf("Enrollment after reopen: %v", err)
	}
	if diff := cmp.Diff(enrollment(7, "v7"), gotE); diff != "" {
		t.Errorf("Enrollment after reopen (-want, +got):\n%s", diff)
	}
	gotP, err := c.PendingSession()
	if err != nil {
		t.Fatalf("PendingSession after reopen: %v", err)
	}
	if diff := cmp.Diff(pending(), gotP); diff != "" {
		t.Errorf("PendingSession after reopen (-want, +got):\n%s", diff)
	}
	// The rollback floor survives the reopen too.
	if ok, err := c.PutEnrollment(reenrollment(6, "v6")); err != nil || ok {
		t.Errorf("PutEnrollment(v6) after reopen = %v, %v; want false, nil", ok, err)
	}
}

// TestSecondOpenFails checks that a second agent cannot open the cache
// while the first holds it, and that the held file is not mistaken for a
// corrupt one. Open waits for bbolt's file lock for up to its lock timeout
// (2 s), so this test runs in parallel with the rest.
func TestSecondOpenFails(t *testing.T) {
	t.Parallel()
	path := newPath(t)
	first := openCache(t, path)
	if err := first.PutIdentity(identity()); err != nil {
		t.Fatalf("PutIdentity: %v", err)
	}

	const bound = 30 * time.Second // lock timeout plus generous slack for -race
	type result struct {
		c     *cache.Cache
		moved string
		err   error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		c, moved, err := cache.Open(path)
		done <- result{c, moved, err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			r.c.Close()
			t.Fatal("second Open of a cache in use succeeded")
		}
		if !errors.Is(r.err, cache.ErrLocked) {
			t.Errorf("second Open = %v, want ErrLocked", r.err)
		}
		if r.moved != "" {
			t.Errorf("second Open moved the cache in use aside to %s", r.moved)
		}
		t.Logf("second Open failed after %v: %v", time.Since(start).Round(time.Millisecond), r.err)
	case <-time.After(bound):
		t.Fatalf("second Open still blocked after %v", bound)
	}

	// The first handle and its data are unaffected.
	got, err := first.Identity()
	if err != nil {
		t.Fatalf("Identity on the first handle: %v", err)
	}
	if diff := cmp.Diff(identity(), got); diff != "" {
		t.Errorf("Identity on the first handle (-want, +got):\n%s", diff)
	}
}
