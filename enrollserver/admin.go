package enrollserver

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
)

// Preregister records a factory batch in one transaction. Re-registering
// the same rows is a no-op. operator is the authenticated caller, for the
// log.
func (s *Server) Preregister(ctx context.Context, operator string, req *api.PreregisterRequest) (*api.PreregisterResponse, error) {
	now := s.cfg.Now()
	regs := make([]*store.Preregistration, len(req.Devices))
	for i, d := range req.Devices {
		regs[i] = &store.Preregistration{DeviceID: d.DeviceID, Serial: d.Serial, Group: d.Group, CreatedAt: now}
	}
	if err := s.cfg.Store.PutPreregistrations(ctx, regs); err != nil {
		return nil, fmt.Errorf("storing pre-registrations: %w", err)
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "devices pre-registered", slog.String("operator", operator), slog.Int("count", len(regs)))
	return &api.PreregisterResponse{Registered: len(regs)}, nil
}

// MaxListedDevices bounds one device listing.
const MaxListedDevices = 100000

// ListDevices returns enrolled devices in ID order.
func (s *Server) ListDevices(ctx context.Context) (*api.DeviceList, error) {
	out := &api.DeviceList{Devices: []api.DeviceSummary{}}
	err := s.cfg.Store.Devices(ctx, func(d *store.Device) bool {
		out.Devices = append(out.Devices, api.DeviceSummary{
			DeviceID: d.ID, Status: string(d.Status), Admission: string(d.Admission),
			Serial: d.Serial, Group: d.Group, Hostname: d.Info.Hostname,
			CertSerial: d.CertSerial, CertNotAfter: d.CertNotAfter, BundleVersion: d.BundleVersion,
			Enrollments: d.Enrollments, LastEnrolledAt: d.LastEnrolledAt,
		})
		return len(out.Devices) < MaxListedDevices
	})
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	return out, nil
}
