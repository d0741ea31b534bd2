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
	// maxDedupe bounds the remembered answers.
	maxDedupe = 100000
	// maxBindings bounds the sessions bound to the client that began
	// them: as many as the store keeps live sessions in memory
	// (store.DefaultMaxMemorySessions); past it a begin is answered busy.
	maxBindings = 200000
	// maxDedupeBytes bounds the remembered answers' payloads: a finish
	// answer (sealed chain and bundle) is ~5 KiB, so a boot storm of
	// 100,000 would otherwise hold ~500 MiB for dedupeTTL. Past it the
	// oldest go first; a request redelivered after its answer was dropped
	// is handled again (begin makes a new session, a repeated finish gets
	// the same result from the store).
	maxDedupeBytes = 64 << 20
	// brokerSessionExpiry bounds how long the embedded broker keeps a
	// disconnected client's session (a client asking for a persistent
	// one; devices use clean sessions and retry): long enough for a
	// reconnect to get its QoS 1 answers, short enough that client IDs
	// a client chooses cannot pile up sessions.
	brokerSessionExpiry = 60 // seconds
	// maxBrokerClients bounds the embedded broker's connected clients:
	// a boot storm of 10,000 devices with room to spare.
	maxBrokerClients = 100000
	// connectCheckTimeout bounds the store read that checks a device
	// certificate at connect.
	connectCheckTimeout = 5 * time.Second
	// requestTimeout bounds the handling of one request.
	requestTimeout = 30 * time.Second
	// bindingsFullRetryAfter is the Retry-After, in seconds, of a begin
	// refused at maxBindings: a session lives two minutes.
	bindingsFullRetryAfter = 5
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
	// wg counts dispatched requests; closing (under mu) stops new ones,
	// so no wg.Add races close's wg.Wait (paho runs message handlers on
	// goroutines Disconnect does not wait for).
	wg      sync.WaitGroup
	closing bool
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
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
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
		h.reply(client, envelopeError(payload, admission.APIError(err, "retry_after_seconds")))
		return
	}
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		t.Cancel()
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	go func() {
		defer h.wg.Done()
		p, err := t.Wait(h.ctx)
		if err != nil {
			if h.ctx.Err() == nil {
				h.reply(client, envelopeError(payload, admission.APIError(err, "retry_after_seconds")))
			}
			return
		}
		defer p.Release()
		h.handle(client, payload, p)
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
	req := admission.Request{Class: admission.ClassEnroll, Continues: envelopeOp(payload) == api.OpFinish,
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

// envelopeError answers a request that could not be decoded or was
// refused, echoing its ID and op if they can be read.
func envelopeError(payload []byte, e *api.Error) *api.MQTTResponse {
	id, op := envelopeOf(payload)
	return &api.MQTTResponse{ID: id, Op: op, Error: e}
}

// envelopeOp is the envelope's op (envelopeOf).
func envelopeOp(payload []byte) string {
	_, op := envelopeOf(payload)
	return op
}

func (h *handler) handle(client string, payload []byte, p *admission.Permit) {
	ctx, cancel := context.WithTimeout(h.ctx, requestTimeout)
	defer cancel()
	ctx = admission.WithPermit(ctx, p)
	var req api.MQTTRequest
	if err := api.Unmarshal(payload, &req); err != nil {
		h.reply(client, envelopeError(payload, asAPIError(err, "")))
		return
	}
	// A redelivered request gets the answer already given.
	key := client + "/" + req.ID
	if prev, ok := h.answer(key); ok {
		admission.Yield(ctx)
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
		resp.Begin, err = h.core.BeginSealed(ctx, corr, req.Begin)
		if err == nil && !h.bind(resp.Begin.SessionID, client, resp.Begin.ExpiresAt) {
			// Its finish would be refused: begin again later.
			resp.Begin, err = nil, &api.Error{Code: api.CodeBusy, RetryAfterSeconds: bindingsFullRetryAfter,
				Message: "too many enrollments in progress over MQTT; retry after retry_after_seconds"}
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
	// The slot is for the server's work, not for the broker: publishing
	// to an external one waits for its acknowledgement (up to 10 s while
	// it reconnects).
	admission.Yield(ctx)
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
	fr, err := h.core.FinishSealed(ctx, corr, req.Finish)
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

// bind records that client began sessionID, and reports false when the
// bindings are at maxBindings even after dropping expired ones.
func (h *handler) bind(sessionID, client string, expires time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.sessions) >= maxBindings {
		now := time.Now()
		for id, s := range h.sessions {
			if now.After(s.expires) {
				delete(h.sessions, id)
			}
		}
	}
	if len(h.sessions) >= maxBindings {
		return false
	}
	h.sessions[sessionID] = binding{client: client, expires: expires}
	return true
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

// maxEnvelopeKeys bounds the top-level keys envelopeOf reads.
const maxEnvelopeKeys = 4

// envelopeOf reads the envelope's "id" and "op" without decoding the
// evidence: a token scan that stops once it has both (clients send them
// first) and after maxEnvelopeKeys keys. What it cannot read is "". It
// serves admission and refusals; the request itself is decoded strictly
// once admitted.
func envelopeOf(payload []byte) (id, op string) {
	dec := json.NewDecoder(bytes.NewReader(payload))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", ""
	}
	for range maxEnvelopeKeys {
		if (id != "" && op != "") || !dec.More() {
			break
		}
		k, err := dec.Token()
		if err != nil {
			break
		}
		if k == "id" || k == "op" {
			v, err := dec.Token()
			if err != nil {
				break
			}
			str, _ := v.(string)
			if k == "id" {
				id = str
			} else {
				op = str
			}
			continue
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			break
		}
	}
	return id, op
}
