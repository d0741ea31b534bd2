package mqttapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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
	if len(ids) == 0 {
		return
	}
	b.h.wg.Add(1)
	go func() {
		defer b.h.wg.Done()
		ctx, cancel := context.WithTimeout(b.h.ctx, pushTimeout)
		defer cancel()
		for _, id := range ids {
			compact, group, version, err := b.h.core.SignedBundle(ctx, id)
			if err != nil {
				b.log.Warn("config push: no bundle for device", "device_id", id, "err", err)
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
			b.h.publish(id, raw)
			b.log.Info("config pushed", "device_id", id, "bundle_version", version)
		}
	}()
}
