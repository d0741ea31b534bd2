// Package supervise tells a device's supervisor what the agent's state is:
// a ready file that exists only while the device is ready, a status file
// that always holds the latest status, and systemd's sd_notify protocol.
// All files are written atomically; nothing here talks to the network.
package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/internal/atomicfile"
)

// ReadyFile is the content of the ready file.
type ReadyFile struct {
	DeviceID      string    `json:"device_id"`
	CertSerial    string    `json:"cert_serial"`
	CertNotAfter  time.Time `json:"cert_not_after"`
	BundleVersion uint64    `json:"bundle_version"`
	ReadySince    time.Time `json:"ready_since"`
}

// Reporter turns agent statuses into files and notifications. Its zero
// value reports nothing.
type Reporter struct {
	// ReadyPath, if set, exists (with a ReadyFile) exactly while the
	// device is ready.
	ReadyPath string
	// StatusPath, if set, always holds the latest device.Status.
	StatusPath string
	// NotifySocket is $NOTIFY_SOCKET: systemd's notification socket.
	NotifySocket string
	// OnError receives reporting failures (a full disk must not stop the
	// agent); nil ignores them.
	OnError func(error)

	mu         sync.Mutex
	notified   bool
	lastStatus string
}

// Report publishes s.
func (r *Reporter) Report(s device.Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.report(s); err != nil && r.OnError != nil {
		r.OnError(err)
	}
}

func (r *Reporter) report(s device.Status) error {
	var errs []error
	if r.StatusPath != "" {
		b, _ := json.MarshalIndent(s, "", "  ")
		errs = append(errs, atomicfile.Write(r.StatusPath, append(b, '\n'), 0o644))
	}
	if r.ReadyPath != "" {
		if s.Ready {
			b, _ := json.MarshalIndent(ReadyFile{
				DeviceID: s.DeviceID, CertSerial: s.CertSerial, CertNotAfter: s.CertNotAfter,
				BundleVersion: s.BundleVersion, ReadySince: s.ReadySince,
			}, "", "  ")
			errs = append(errs, atomicfile.Write(r.ReadyPath, append(b, '\n'), 0o644))
		} else if err := os.Remove(r.ReadyPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if r.NotifySocket != "" {
		var msg []string
		if s.Ready && !r.notified {
			msg = append(msg, "READY=1")
			r.notified = true
		}
		line := fmt.Sprintf("STATUS=%s", s.Phase)
		if s.Reason != "" && !s.Ready {
			line += ": " + s.Reason
		}
		if line != r.lastStatus {
			msg = append(msg, line)
			r.lastStatus = line
		}
		if len(msg) > 0 {
			errs = append(errs, Notify(r.NotifySocket, strings.Join(msg, "\n")))
		}
	}
	return errors.Join(errs...)
}

// Notify sends one sd_notify datagram (see sd_notify(3)) to socket, a path
// or an abstract socket name starting with '@'.
func Notify(socket, state string) error {
	addr := &net.UnixAddr{Name: socket, Net: "unixgram"}
	if strings.HasPrefix(socket, "@") {
		addr.Name = "\x00" + socket[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// ReadStatus reads a status file written by a Reporter.
func ReadStatus(path string) (*device.Status, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s device.Status
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("status file %s: %w", path, err)
	}
	return &s, nil
}
