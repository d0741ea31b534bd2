package mqttapi

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/sealing"
)

// Limits of the MQTT adapter.
const (
	// dedupeTTL keeps answers for redelivered requests (QoS 1).
	dedupeTTL = 10 * time.Minute
	// maxDedupe bounds the remembered answers and session bindings.
	maxDedupe = 100000
	// maxDedupeBytes bounds the remembered answers' payloads: a finish
	// answer (sealed chain and bundle) is ~5 KiB, so a boot storm of
	// 100,000 would otherwise hold ~500 MiB for dedupeTTL. Past it the
	// oldest go first; a request redelivered after its answer was dropped
	// is handled again (begin makes a new session, a repeated finish gets
	// the same result from the store).
	maxDedupeBytes = 64 << 20
	// requestTimeout bounds the handling of one request.
	requestTimeout = 30 * time.Second
)

// handler serves requests whatever the broker. publish sends an answer to
// a client's response topic; certOf returns the verified certificate of a
// connected device when the broker is ours (nil for an external broker).
type handler struct {
	core    *enrollserver.Server
	log     *slog.Logger
	publish func(client string, payload []byte)
	certOf  func(client string) *x509.Certificate
	// adm admits requests (see dispatch); it bounds the goroutines of
	// dispatch to its slots plus its queue.
	adm     *admission.Controller
	ownsAdm bool // close adm with the handler
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc

	mu       sync.Mutex
	sessions map[string]binding // session ID → client that began it
	answers  map[string]answer  // client/message ID → answer
	order    []string           // answers keys, oldest first
	bytes    int                // payload bytes in answers
}

type binding struct {
	client  string
	expires time.Time
}

type answer struct {
	payload []byte
	at      time.Time
}

// newHandler serves core's enrollment; adm admits its requests (nil: a
// controller of its own with the defaults, closed with the handler).
func newHandler(core *enrollserver.Server, log *slog.Logger, adm *admission.Controller) *handler {
	ctx, cancel := context.WithCancel(context.Background())
	owned := adm == nil
	if owned {
		adm = admission.Default()
	}
	return &handler{core: core, log: log, adm: adm, ownsAdm: owned, ctx: ctx, cancel: cancel,
		sessions: map[string]binding{}, answers: map[string]answer{}}
}

// close stops accepting work and waits for requests in flight.
func (h *handler) close() {
	if h.ownsAdm {
		h.adm.Close()
	}
	h.cancel()
	h.wg.Wait()
}

// dispatch takes one request from topic (already authorised by the broker)
// and handles it on a worker, or sheds it.
func (h *handler) dispatch(topic string, payload []byte) {
	client, kind, ok := api.ClientOfTopic(topic)
	if !ok || kind != "req" {
		return
	}
	if len(payload) > api.MaxMQTTMessageBytes {
		h.reply(client, envelopeError(payload, api.Errorf(api.CodeBadRequest, "message exceeds %d bytes", api.MaxMQTTMessageBytes)))
		return
	}
	// Admission: refused at once (rate limit, full queue) on the broker's
	// goroutine, so that only admitted or queued requests get one of
	// their own.
	t, err := h.adm.Enter(h.classify(client, payload))
	if err != nil {
		h.reply(client, envelopeError(payload, busyError(err)))
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		p, err := t.Wait(h.ctx)
		if err != nil {
			if h.ctx.Err() == nil {
				h.reply(client, envelopeError(payload, busyError(err)))
			}
			return
		}
		defer p.Release()
		h.handle(client, payload)
	}()
}

// classify names a request's admission class and client without decoding
// its evidence: a client with a device ID is a renewal (urgent when the
// certificate it connected with, on the embedded broker, is near its end;
// an external broker authenticated it by certificate but does not say
// which), any other client a first enrollment; a finish continues a begun
// session. The operation is read by a shallow decode of the envelope. The
// client key is the MQTT client ID: a bootstrap client picks its own, so
// the per-client limit holds a misbehaving device, not an attacker who
// reconnects under new IDs (the broker's connection limits do that).
func (h *handler) classify(client string, payload []byte) admission.Request {
	req := admission.Request{Class: admission.ClassEnroll, Continues: opOf(payload) == api.OpFinish,
		KeyKind: admission.KeyDevice, Key: client}
	if api.ValidDeviceID(client) {
		req.Class = admission.ClassRenew
		if h.certOf != nil {
			if leaf := h.certOf(client); leaf != nil {
				req.Class = admission.RenewalClass(leaf.NotBefore, leaf.NotAfter, time.Now())
			}
		}
	}
	return req
}

// busyError maps an admission refusal to the protocol's busy answer.
func busyError(err error) *api.Error {
	var re *admission.RefusedError
	switch {
	case errors.As(err, &re) && re.Reason == admission.ReasonRateLimited:
		return &api.Error{Code: api.CodeBusy, RetryAfterSeconds: re.RetryAfterSeconds(),
			Message: "too many requests from this client; retry after retry_after_seconds"}
	case errors.As(err, &re):
		return &api.Error{Code: api.CodeBusy, RetryAfterSeconds: re.RetryAfterSeconds(),
			Message: "server busy (" + re.Reason.String() + "); retry after retry_after_seconds"}
	}
	return &api.Error{Code: api.CodeUnavailable, RetryAfterSeconds: int(admission.MinRetryAfter / time.Second),
		Message: "server shutting down; retry later"}
}

// envelopeError answers a request that could not be decoded, echoing its
// ID if one can be read.
func envelopeError(payload []byte, e *api.Error) *api.MQTTResponse {
	var env struct {
		ID string `json:"id"`
		Op string `json:"op"`
	}
	json.Unmarshal(payload, &env)
	return &api.MQTTResponse{ID: env.ID, Op: env.Op, Error: e}
}

func (h *handler) handle(client string, payload []byte) {
	ctx, cancel := context.WithTimeout(h.ctx, requestTimeout)
	defer cancel()
	var req api.MQTTRequest
	if err := api.Unmarshal(payload, &req); err != nil {
		h.reply(client, envelopeError(payload, asAPIError(err, "")))
		return
	}
	// A redelivered request gets the answer already given.
	key := client + "/" + req.ID
	if prev, ok := h.answer(key); ok {
		h.publish(client, prev)
		return
	}
	corr := req.CorrelationID
	if corr == "" {
		corr = req.ID
	}
	resp := &api.MQTTResponse{ID: req.ID, Op: req.Op}
	var err error
	switch req.Op {
	case api.OpBegin:
		resp.Begin, err = h.core.Begin(ctx, corr, req.Begin)
		if err == nil {
			h.bind(resp.Begin.SessionID, client, resp.Begin.ExpiresAt)
		}
	case api.OpFinish:
		resp.Sealed, err = h.finish(ctx, client, corr, &req)
	case api.OpWhoami:
		resp.Whoami, err = h.whoami(ctx, client)
	}
	if err != nil {
		resp = &api.MQTTResponse{ID: req.ID, Op: req.Op, Error: asAPIError(err, corr)}
		if resp.Error.Code == api.CodeInternal {
			h.log.Error("mqtt request failed", "client", client, "op", req.Op, "correlation_id", corr, "err", err)
		}
	}
	raw, err := json.Marshal(resp)
	if err != nil {
		return
	}
	// Remember answers worth repeating; transient failures are retried
	// afresh.
	if resp.Error == nil || resp.Error.Code.Permanent() {
		h.remember(key, raw)
	}
	h.publish(client, raw)
}

// finish checks the session belongs to this client, runs the shared finish
// and seals the answer with the session's key.
func (h *handler) finish(ctx context.Context, client, corr string, req *api.MQTTRequest) ([]byte, error) {
	sid := req.Finish.SessionID
	h.mu.Lock()
	bd, ok := h.sessions[sid]
	h.mu.Unlock()
	if !ok || bd.client != client {
		return nil, api.Errorf(api.CodeNonceUnknownOrUsed, "session %s was not begun by this client over MQTT; start again with begin", sid)
	}
	key, ok := h.core.SealKey(sid)
	if !ok {
		return nil, api.Errorf(api.CodeNonceUnknownOrUsed, "session %s has no sealing key (expired or server restarted); start again with begin", sid)
	}
	fr, err := h.core.Finish(ctx, corr, req.Finish)
	if err != nil {
		return nil, err
	}
	plain, err := json.Marshal(fr)
	if err != nil {
		return nil, err
	}
	return sealing.Seal(key, sid, req.ID, plain)
}

func (h *handler) whoami(ctx context.Context, client string) (*api.WhoamiResponse, error) {
	if !api.ValidDeviceID(client) {
		return nil, api.Errorf(api.CodeUnauthenticated, "whoami needs a connection with a device certificate")
	}
	if h.certOf == nil { // an external broker authenticated the device
		return h.core.WhoamiByID(ctx, client)
	}
	leaf := h.certOf(client)
	if leaf == nil {
		return nil, api.Errorf(api.CodeUnauthenticated, "whoami needs a connection with a device certificate")
	}
	return h.core.Whoami(ctx, leaf)
}

func (h *handler) bind(sessionID, client string, expires time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.sessions) >= maxDedupe {
		now := time.Now()
		for id, s := range h.sessions {
			if now.After(s.expires) {
				delete(h.sessions, id)
			}
		}
	}
	if len(h.sessions) < maxDedupe {
		h.sessions[sessionID] = binding{client: client, expires: expires}
	}
}

func (h *handler) answer(key string) ([]byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	a, ok := h.answers[key]
	if !ok || time.Since(a.at) > dedupeTTL {
		return nil, false
	}
	return a.payload, true
}

func (h *handler) remember(key string, payload []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(h.order) > 0 {
		oldest := h.order[0]
		a, ok := h.answers[oldest]
		if ok && time.Since(a.at) < dedupeTTL && len(h.answers) < maxDedupe && h.bytes+len(payload) <= maxDedupeBytes {
			break
		}
		if ok {
			h.bytes -= len(a.payload)
			delete(h.answers, oldest)
		}
		h.order = h.order[1:]
	}
	if prev, ok := h.answers[key]; ok {
		h.bytes -= len(prev.payload)
	}
	h.answers[key] = answer{payload: payload, at: time.Now()}
	h.bytes += len(payload)
	h.order = append(h.order, key)
}

func (h *handler) reply(client string, resp *api.MQTTResponse) {
	if raw, err := json.Marshal(resp); err == nil {
		h.publish(client, raw)
	}
}

func asAPIError(err error, corr string) *api.Error {
	var ae *api.Error
	if !errors.As(err, &ae) {
		ae = api.Errorf(api.CodeInternal, "internal error; retry later")
	}
	out := *ae
	out.CorrelationID = corr
	return &out
}

// maxEnvelopeKeys bounds the top-level keys opOf reads before "op".
const maxEnvelopeKeys = 4

// opOf reads the envelope's "op" for admission, without decoding the
// evidence: it stops at the key, which clients send second (after "id"),
// and at most maxEnvelopeKeys keys in. It returns "" when it cannot tell;
// the request is then classed as a begin and decoded strictly later.
func opOf(payload []byte) string {
	dec := json.NewDecoder(bytes.NewReader(payload))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for range maxEnvelopeKeys {
		if !dec.More() {
			return ""
		}
		k, err := dec.Token()
		if err != nil {
			return ""
		}
		if k == "op" {
			v, err := dec.Token()
			if err != nil {
				return ""
			}
			op, _ := v.(string)
			return op
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}
