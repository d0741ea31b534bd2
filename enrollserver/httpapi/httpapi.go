// Package httpapi is the HTTPS transport of the enrollment server: a thin
// adapter that decodes requests strictly, calls enrollserver.Server, and
// maps *api.Error codes to HTTP status codes. It holds no enrollment logic.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
)

// Options configure the handler.
type Options struct {
	Logger *slog.Logger
	// MaxInFlight bounds begin and finish requests handled at once; more
	// wait in a bounded priority queue, and beyond it are answered 429
	// busy with a Retry-After (see shedder). 0 means
	// admission.DefaultSlots(). Ignored when Admission is set.
	MaxInFlight int
	// Admission, if set, admits begin and finish (to share one budget
	// with the MQTT adapter); nil builds one from MaxInFlight.
	Admission *admission.Controller
	// Registerer receives the admission metrics of a controller built
	// here; nil means Gatherer when it is also a Registerer.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; nil serves none.
	Gatherer prometheus.Gatherer
	// Ready reports readiness for /readyz; nil means always ready.
	Ready func(context.Context) error
	// BodyTimeout bounds the reading of an admitted begin or finish
	// body, which holds an admission slot; 0 means DefaultBodyTimeout.
	BodyTimeout time.Duration
}

// DefaultBodyTimeout is how long an admitted begin or finish may take to
// send its body (a finish is a few KiB, up to ~1.4 MiB with an event
// log). Without it a client trickling the body would hold an admission
// slot for the server's whole ReadTimeout, and a few such clients would
// starve every device.
const DefaultBodyTimeout = 5 * time.Second

// NewHandler returns the server's HTTP handler.
func NewHandler(srv *enrollserver.Server, opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{srv: srv, opts: opts}
	mux := http.NewServeMux()
	shed := newShedder(srv, opts)
	mux.HandleFunc("POST "+api.PathBegin, shed.wrap(h.begin, false))
	mux.HandleFunc("POST "+api.PathFinish, shed.wrap(h.finish, true))
	mux.HandleFunc("GET "+api.PathWhoami, h.whoami)
	mux.HandleFunc("GET "+api.PathCRL, h.crl)
	mux.HandleFunc("GET "+api.PathCRLPEM, h.crlPEM)
	h.registerAdmin(mux)
	mux.HandleFunc("GET "+api.PathHealthz, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET "+api.PathReadyz, h.readyz)
	if opts.Gatherer != nil {
		mux.Handle("GET "+api.PathMetrics, promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// The catch-all matched: find the methods the path takes, if any.
		var allow []string
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "/" && pattern != "" {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, correlationID(r), api.Errorf(api.CodeMethodNotAllowed, "%s takes %s, not %s", r.URL.Path, strings.Join(allow, " or "), r.Method))
			return
		}
		writeError(w, correlationID(r), api.Errorf(api.CodeNotFound, "no endpoint %s %s", r.Method, r.URL.Path))
	})
	return mux
}

type handler struct {
	srv  *enrollserver.Server
	opts Options
}

func (h *handler) begin(w http.ResponseWriter, r *http.Request) {
	corr := correlationID(r)
	var req api.BeginRequest
	if err := decode(r, api.MaxRequestBytes, &req); err != nil {
		h.fail(w, r, corr, err)
		return
	}
	resp, err := h.srv.Begin(r.Context(), corr, &req)
	if err != nil {
		h.fail(w, r, corr, err)
		return
	}
	writeJSON(w, corr, resp)
}

func (h *handler) finish(w http.ResponseWriter, r *http.Request) {
	corr := correlationID(r)
	var req api.FinishRequest
	// Finish carries the event log (up to api.MaxEventLogBytes, base64).
	if err := decode(r, api.MaxFinishRequestBytes, &req); err != nil {
		h.fail(w, r, corr, err)
		return
	}
	resp, err := h.srv.Finish(r.Context(), corr, &req)
	if err != nil {
		h.fail(w, r, corr, err)
		return
	}
	writeJSON(w, corr, resp)
}

func (h *handler) whoami(w http.ResponseWriter, r *http.Request) {
	corr := correlationID(r)
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		h.fail(w, r, corr, api.Errorf(api.CodeUnauthenticated, "this endpoint needs a device certificate issued by this server (mTLS)"))
		return
	}
	resp, err := h.srv.Whoami(r.Context(), r.TLS.VerifiedChains[0][0])
	if err != nil {
		h.fail(w, r, corr, err)
		return
	}
	writeJSON(w, corr, resp)
}

func (h *handler) readyz(w http.ResponseWriter, r *http.Request) {
	if h.opts.Ready != nil {
		if err := h.opts.Ready(r.Context()); err != nil {
			writeError(w, "", api.Errorf(api.CodeUnavailable, "not ready: %v", err))
			return
		}
	}
	w.Write([]byte("ready\n"))
}

func decode(r *http.Request, limit int64, v api.Validator) error {
	if ct := r.Header.Get("Content-Type"); ct != api.ContentTypeJSON {
		return api.Errorf(api.CodeBadRequest, "Content-Type must be %s, got %q", api.ContentTypeJSON, ct)
	}
	return api.Decode(r.Body, limit, v)
}

// fail writes err; anything that is not an *api.Error is our fault and is
// logged, never shown to the client.
func (h *handler) fail(w http.ResponseWriter, r *http.Request, corr string, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		h.opts.Logger.LogAttrs(r.Context(), slog.LevelError, "internal error", slog.String("correlation_id", corr),
			slog.String("path", r.URL.Path), slog.String("err", err.Error()))
		ae = api.Errorf(api.CodeInternal, "internal error; retry later (correlation id %s)", corr)
	}
	writeError(w, corr, ae)
}

// StatusOf maps a protocol error code to its HTTP status.
func StatusOf(c api.Code) int {
	switch c {
	case api.CodeBadRequest:
		return http.StatusBadRequest
	case api.CodeUnauthenticated:
		return http.StatusUnauthorized
	case api.CodeForbidden:
		return http.StatusForbidden
	case api.CodeEKUntrusted, api.CodeNotRegistered, api.CodeAKInvalid, api.CodeActivationFailed,
		api.CodeQuoteInvalid, api.CodeKeyNotCertified:
		return http.StatusForbidden
	case api.CodeFirmwareNotApproved, api.CodeSecureBootDisabled, api.CodeEventLogMismatch, api.CodePCRNotQuoted:
		return http.StatusForbidden
	case api.CodeNonceUnknownOrUsed, api.CodeConflict:
		return http.StatusConflict
	case api.CodePendingApproval:
		return http.StatusAccepted
	case api.CodeDenied, api.CodeRevoked:
		return http.StatusForbidden
	case api.CodeBusy:
		return http.StatusTooManyRequests
	case api.CodeNotFound:
		return http.StatusNotFound
	case api.CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case api.CodeUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

func writeError(w http.ResponseWriter, corr string, ae *api.Error) {
	out := *ae
	out.CorrelationID = corr
	if out.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(out.RetryAfterSeconds))
	}
	writeJSONStatus(w, corr, StatusOf(out.Code), &out)
}

func writeJSON(w http.ResponseWriter, corr string, v any) { writeJSONStatus(w, corr, http.StatusOK, v) }

func writeJSONStatus(w http.ResponseWriter, corr string, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"code":"internal","message":"encoding response"}`)
	}
	w.Header().Set("Content-Type", api.ContentTypeJSON)
	// A known length lets HTTP/1.1 send the answer as is, not chunked
	// (finish answers exceed the server's 2 KiB chunking threshold).
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if corr != "" {
		w.Header().Set(api.HeaderCorrelationID, corr)
	}
	w.WriteHeader(status)
	w.Write(b)
}

// correlationID adopts a well-formed client correlation ID or makes one.
func correlationID(r *http.Request) string {
	if id := r.Header.Get(api.HeaderCorrelationID); api.ValidCorrelationID(id) {
		return id
	}
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
