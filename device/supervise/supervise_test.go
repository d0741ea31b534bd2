package supervise_test

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/device/supervise"
)

func TestReporter(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var errs []error
	r := &supervise.Reporter{
		ReadyPath:    filepath.Join(dir, "ready.json"),
		StatusPath:   filepath.Join(dir, "status.json"),
		NotifySocket: sock,
		OnError:      func(err error) { errs = append(errs, err) },
	}
	read := func() string {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 4096)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}

	r.Report(device.Status{DeviceID: "d", Phase: device.PhaseEnrolling, Reason: "not enrolled yet"})
	if _, err := os.Stat(r.ReadyPath); !os.IsNotExist(err) {
		t.Errorf("ready file exists while not ready: %v", err)
	}
	if got := read(); got != "STATUS=enrolling: not enrolled yet" {
		t.Errorf("notification %q", got)
	}

	now := time.Now().UTC().Truncate(time.Second)
	r.Report(device.Status{DeviceID: "d", Ready: true, Phase: device.PhaseReady, CertSerial: "ab", CertNotAfter: now, BundleVersion: 7, ReadySince: now})
	if got := read(); !strings.HasPrefix(got, "READY=1\nSTATUS=ready") {
		t.Errorf("notification %q, want READY=1 first", got)
	}
	var rf supervise.ReadyFile
	b, err := os.ReadFile(r.ReadyPath)
	if err != nil || json.Unmarshal(b, &rf) != nil || rf.DeviceID != "d" || rf.BundleVersion != 7 || !rf.CertNotAfter.Equal(now) {
		t.Errorf("ready file %s, %v", b, err)
	}
	s, err := supervise.ReadStatus(r.StatusPath)
	if err != nil || !s.Ready || s.CertSerial != "ab" {
		t.Errorf("status %+v, %v", s, err)
	}

	// Readiness lost: the ready file goes, READY=1 is not repeated.
	r.Report(device.Status{DeviceID: "d", Phase: device.PhaseEnrolling, Reason: "certificate expired"})
	if _, err := os.Stat(r.ReadyPath); !os.IsNotExist(err) {
		t.Errorf("ready file still exists: %v", err)
	}
	if got := read(); strings.Contains(got, "READY=1") {
		t.Errorf("READY=1 sent twice: %q", got)
	}
	if len(errs) > 0 {
		t.Errorf("reporting errors: %v", errs)
	}
}

func TestNotifyWithoutListener(t *testing.T) {
	if err := supervise.Notify(filepath.Join(t.TempDir(), "none"), "READY=1"); err == nil {
		t.Error("notify to a missing socket succeeded")
	}
}
