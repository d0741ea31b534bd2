package mqttapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
)

// pushTimeout bounds one round of config pushes.
const pushTimeout = time.Minute

// pushConfig sends every connected certified device the change concerns
// its current bundle, signed for it. Devices not connected get the new
// version at their next renewal or refresh. It runs off the admin call's
// goroutine.
func (b *Broker) pushConfig(c enrollserver.ConfigChange) {
	b.mu.Lock()
	ids := make([]string, 0, len(b.devices))
	for id := range b.devices {
		if c.DeviceID == "" || c.DeviceID == id {
			ids = append(ids, id)
		}
	}
	b.mu.Unlock()
	b.log.Debug("config push", "connected_devices", len(ids), "device_id", c.DeviceID, "group", c.Group)
	if len(ids) > 0 {
		b.h.push(c, ids, b.log)
	}
}

// pushConfig, through an external broker, which cannot say who is
// connected, publishes to every enrolled device the change concerns; one
// not connected misses it (clean sessions) and gets the version at its next
// renewal or refresh.
func (e *External) pushConfig(c enrollserver.ConfigChange) {
	e.h.wg.Add(1)
	go func() {
		defer e.h.wg.Done()
		var ids []string
		ctx, cancel := context.WithTimeout(e.h.ctx, pushTimeout)
		defer cancel()
		if err := e.h.core.EnrolledDevices(ctx, c, func(id string) { ids = append(ids, id) }); err != nil {
			e.log.Error("config push: listing devices", "err", err)
			return
		}
		e.h.push(c, ids, e.log)
	}()
}

// push signs and publishes each device's current bundle on its response
// topic, in the background.
func (h *handler) push(c enrollserver.ConfigChange, ids []string, log *slog.Logger) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		ctx, cancel := context.WithTimeout(h.ctx, pushTimeout)
		defer cancel()
		for _, id := range ids {
			compact, group, version, err := h.core.SignedBundle(ctx, id)
			if err != nil {
				log.Warn("config push: no bundle for device", "device_id", id, "err", err)
				continue
			}
			if !c.Concerns(id, group) {
				continue
			}
			var mid [12]byte
			rand.Read(mid[:])
			raw, err := json.Marshal(&api.MQTTResponse{ID: "push-" + hex.EncodeToString(mid[:]), Op: api.OpConfig, Bundle: compact})
			if err != nil {
				continue
			}
			h.publish(id, raw)
			log.Info("config pushed", "device_id", id, "bundle_version", version)
		}
	}()
}
