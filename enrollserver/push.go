package enrollserver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/pki"
)

// ConfigChange says which devices a new config version may concern: one
// device, one group, or (Group and DeviceID empty) every device.
type ConfigChange struct {
	DeviceID string
	Group    string
}

// Concerns reports whether a device of group belongs to the change's scope.
func (c ConfigChange) Concerns(deviceID, group string) bool {
	switch {
	case c.DeviceID != "":
		return c.DeviceID == deviceID
	case c.Group != "":
		return c.Group == group
	}
	return true
}

// OnConfigChange registers fn to be called after every stored config
// version, so a transport that keeps devices connected (MQTT) can push the
// new bundle, and returns a function that unregisters it. fn runs on the
// admin call's (or the store watch's) goroutine and must not block.
func (s *Server) OnConfigChange(fn func(ConfigChange)) (unregister func()) {
	return s.configWatchers.add(fn)
}

// configWatchers are the functions OnConfigChange registered.
type configWatchers struct {
	mu   sync.Mutex
	next int
	fns  map[int]func(ConfigChange)
}

func (w *configWatchers) add(fn func(ConfigChange)) func() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fns == nil {
		w.fns = map[int]func(ConfigChange){}
	}
	id := w.next
	w.next++
	w.fns[id] = fn
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.fns, id)
	}
}

func (w *configWatchers) call(c ConfigChange) {
	w.mu.Lock()
	fns := make([]func(ConfigChange), 0, len(w.fns))
	for _, fn := range w.fns {
		fns = append(fns, fn)
	}
	w.mu.Unlock()
	for _, fn := range fns {
		fn(c)
	}
}

// notifyConfig tells the config watchers about a version this server
// stored, unless FollowConfigChanges relays every server's versions.
func (s *Server) notifyConfig(scope string) {
	if s.followingConfigs.Load() {
		return
	}
	s.relayConfig(scope)
}

func (s *Server) relayConfig(scope string) {
	var c ConfigChange
	if id, ok := strings.CutPrefix(scope, "device/"); ok {
		c.DeviceID = id
	} else if g, ok := strings.CutPrefix(scope, "group/"); ok {
		c.Group = g
	}
	s.log.Debug("config change", "scope", scope)
	s.configWatchers.call(c)
}

// SignedBundle signs the config bundle device id would receive now, for a
// push. It refuses a device that is not enrolled and in good standing.
func (s *Server) SignedBundle(ctx context.Context, id string) (compact, group string, version uint64, err error) {
	dev, err := s.cfg.Store.Device(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return "", "", 0, api.Errorf(api.CodeNotFound, "device %s is not enrolled", id)
	} else if err != nil {
		return "", "", 0, fmt.Errorf("reading device: %w", err)
	}
	if dev.Status != store.StatusEnrolled {
		return "", "", 0, api.Errorf(statusCode(dev.Status), "device %s is %s", id, dev.Status)
	}
	version, config, err := s.deviceBundle(ctx, dev)
	if err != nil {
		return "", "", 0, err
	}
	now := s.cfg.Now()
	compact, err = s.cfg.CA.SignBundle(pki.Bundle{DeviceID: id, Version: version, IssuedAt: now, ExpiresAt: now.Add(s.cfg.BundleLifetime), Config: config})
	if err != nil {
		return "", "", 0, fmt.Errorf("signing bundle: %w", err)
	}
	return compact, dev.Group, version, nil
}

// MaxPushDevices bounds the devices one config change is pushed to through
// an external broker, which cannot tell who is connected.
const MaxPushDevices = 100000

// EnrolledDevices calls fn with the ID of every enrolled device the change
// concerns, at most MaxPushDevices, for a push through a broker that does
// not know who is connected.
func (s *Server) EnrolledDevices(ctx context.Context, c ConfigChange, fn func(id string)) error {
	if c.DeviceID != "" {
		fn(c.DeviceID)
		return nil
	}
	n := 0
	return s.cfg.Store.Devices(ctx, func(d *store.Device) bool {
		if d.Status == store.StatusEnrolled && c.Concerns(d.ID, d.Group) {
			fn(d.ID)
			n++
		}
		return n < MaxPushDevices
	})
}
