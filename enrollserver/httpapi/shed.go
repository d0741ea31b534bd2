package httpapi

import (
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/pki"
)

// shedder puts begin and finish behind an admission.Controller: a bounded
// number in flight, a bounded priority queue, a token bucket per client,
// and 429 busy with a Retry-After for the rest.
//
// A request is classified from what the TLS handshake verified, before its
// body is read (so a queued request holds no decoded evidence, and its body
// is read within the server's ReadTimeout once admitted):
//   - a client presenting a device certificate of this CA over mTLS is a
//     renewal, urgent when the certificate is near its end
//     (admission.RenewalClass); its client key is the device ID;
//   - any other client is a first enrollment keyed by its peer address
//     (RemoteAddr: behind a proxy, every client is the proxy);
//   - finish continues a begun session and goes before begins of its
//     class. A client cannot gain from calling finish falsely: a finish
//     of no live session is refused right after admission, and it is
//     still charged to the client's bucket.
type shedder struct {
	ctrl        *admission.Controller
	td          string
	now         func() time.Time
	bodyTimeout time.Duration
}

// newShedder uses opts.Admission, or builds a controller with
// opts.MaxInFlight slots and the admission defaults, registering its
// metrics (transport="https") on opts.Registerer, or on opts.Gatherer when
// that is also a Registerer (a *prometheus.Registry).
func newShedder(srv *enrollserver.Server, opts Options) *shedder {
	s := &shedder{ctrl: opts.Admission, td: srv.TrustDomain(), now: time.Now, bodyTimeout: opts.BodyTimeout}
	if s.bodyTimeout <= 0 {
		s.bodyTimeout = DefaultBodyTimeout
	}
	if s.ctrl != nil {
		return s
	}
	reg := opts.Registerer
	if r, ok := opts.Gatherer.(prometheus.Registerer); reg == nil && ok {
		reg = r
	}
	ao := &admission.Options{Slots: opts.MaxInFlight, Registerer: reg, ConstLabels: prometheus.Labels{"transport": "https"}}
	ctrl, err := admission.New(ao)
	if err != nil {
		// Bad options (a negative MaxInFlight) or a registration
		// conflict: serve with the defaults rather than not at all.
		opts.Logger.Error("admission control with default options and no metrics", "err", err)
		ctrl = admission.Default()
	}
	s.ctrl = ctrl
	return s
}

// classify reads a request's class and client key without reading its
// body.
func (s *shedder) classify(r *http.Request, continues bool) admission.Request {
	req := admission.Request{Class: admission.ClassEnroll, Continues: continues}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0 {
		leaf := r.TLS.VerifiedChains[0][0]
		if id, err := pki.DeviceIDFromCertificate(leaf, s.td); err == nil {
			req.Class = admission.RenewalClass(leaf.NotBefore, leaf.NotAfter, s.now())
			req.KeyKind, req.Key = admission.KeyDevice, id
			return req
		}
	}
	req.KeyKind, req.Key = admission.KeyAddress, addressKey(r.RemoteAddr)
	return req
}

// addressKey is the rate-limit key of a client address: the IPv4
// address, or the /64 of an IPv6 one (a host is usually given a whole
// /64, and could otherwise take a fresh bucket per address).
func addressKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	if a = a.Unmap(); a.Is4() {
		return a.String()
	}
	p, err := a.Prefix(64)
	if err != nil {
		return host
	}
	return p.String()
}

// wrap admits next through the controller; continues marks finish.
func (s *shedder) wrap(next http.HandlerFunc, continues bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.ctrl.Acquire(r.Context(), s.classify(r, continues))
		if err != nil {
			writeError(w, correlationID(r), admission.APIError(err, "the Retry-After delay"))
			return
		}
		defer p.Release()
		// The body is read once admitted, within bodyTimeout: a client
		// trickling it loses the slot (DefaultBodyTimeout).
		if s.bodyTimeout > 0 {
			http.NewResponseController(w).SetReadDeadline(s.now().Add(s.bodyTimeout))
		}
		next(w, r.WithContext(admission.WithPermit(r.Context(), p)))
	}
}
