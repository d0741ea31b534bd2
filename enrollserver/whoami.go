package enrollserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// WhoamiByID answers whoami for a device that an external MQTT broker
// authenticated: the broker checked the device's certificate and confined
// it to its own topics, so the topic names the device. The device record's
// current certificate stands for the one presented; Whoami's checks
// (issued here, not revoked, device in good standing) apply to it.
func (s *Server) WhoamiByID(ctx context.Context, deviceID string) (*api.WhoamiResponse, error) {
	dev, err := s.cfg.Store.Device(ctx, deviceID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, api.Errorf(api.CodeUnauthenticated, "device %s is not enrolled", deviceID)
	} else if err != nil {
		return nil, fmt.Errorf("reading device: %w", err)
	}
	if len(dev.CertificateChain) == 0 {
		return nil, api.Errorf(api.CodeUnauthenticated, "device %s holds no certificate", deviceID)
	}
	leaf, err := x509.ParseCertificate(dev.CertificateChain[0])
	if err != nil {
		return nil, fmt.Errorf("device %s certificate: %w", deviceID, err)
	}
	if !s.cfg.Now().Before(leaf.NotAfter) {
		return nil, api.Errorf(api.CodeUnauthenticated, "device %s certificate expired at %s; enroll again", deviceID, leaf.NotAfter)
	}
	return s.Whoami(ctx, leaf)
}
