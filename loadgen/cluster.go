package loadgen

import (
	"context"
	"errors"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
)

// SplitTransport begins on one server and finishes on another, as a device
// behind a load balancer may when several enrolld share a store.
type SplitTransport struct {
	BeginOn, FinishOn device.Transport
}

// Begin implements device.Transport.
func (s SplitTransport) Begin(ctx context.Context, corr string, req *api.BeginRequest) (*api.BeginResponse, error) {
	return s.BeginOn.Begin(ctx, corr, req)
}

// Finish implements device.Transport.
func (s SplitTransport) Finish(ctx context.Context, corr string, req *api.FinishRequest, key device.SealKeyFunc) (*api.FinishResponse, error) {
	return s.FinishOn.Finish(ctx, corr, req, key)
}

// Whoami implements device.Transport.
func (s SplitTransport) Whoami(ctx context.Context, corr string) (*api.WhoamiResponse, error) {
	return s.BeginOn.Whoami(ctx, corr)
}

// Close implements device.Transport.
func (s SplitTransport) Close() error { return errors.Join(s.BeginOn.Close(), s.FinishOn.Close()) }
