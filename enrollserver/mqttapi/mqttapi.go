// Package mqttapi is the MQTT transport of the enrollment server: an
// embedded broker (mochi-mqtt) whose hooks confine every client to its own
// request and response topics, and a handler that passes requests to the
// same enrollserver.Server the HTTPS adapter uses.
//
// Identity: a client presenting a device certificate (verified by TLS
// against the enrollment root) must use its device ID as client ID; a
// client without one must use a bootstrap ID ("boot-<random>") and may only
// begin and finish enrollment. A session is bound to the client that began
// it, and its finish answer is sealed with a key only that device's TPM can
// rebuild, so neither another client nor the broker can read or alter it.
package mqttapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/sealing"
)

// Limits of the MQTT adapter.
const (
	// maxInFlight bounds requests processed at once; beyond it clients are
	// told busy with a Retry-After.
	maxInFlight = 256
	// dedupeTTL keeps answers for redelivered requests (QoS 1).
	dedupeTTL = 10 * time.Minute
	// maxDedupe bounds the remembered answers.
	maxDedupe = 100000
	// requestTimeout bounds the handling of one request.
	requestTimeout = 30 * time.Second
	// busyRetryAfter is the hint given when shedding load.
	busyRetryAfter = 1
)

// Options configure the broker.
type Options struct {
	// Listen is the TLS listener address (host:port).
	Listen string
	// TLS must carry the server certificate, ClientCAs = the enrollment
	// root and ClientAuth = tls.VerifyClientCertIfGiven.
	TLS    *tls.Config
	Logger *slog.Logger
}

// Broker is the embedded broker and its handler.
type Broker struct {
	core   *enrollserver.Server
	td     string
	log    *slog.Logger
	srv    *mqtt.Server
	sem    chan struct{}
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	devices  map[string]deviceConn // client ID → its certified connection
	sessions map[string]binding    // session ID → client that began it
	answers  map[string]answer     // client/message ID → answer
	order    []string              // answers keys, oldest first
}

type deviceConn struct {
	cl   *mqtt.Client
	leaf *x509.Certificate // verified by TLS against the enrollment root
}

type binding struct {
	client  string
	expires time.Time
}

type answer struct {
	payload []byte
	at      time.Time
}

// New starts an embedded broker listening on opts.Listen.
func New(core *enrollserver.Server, opts Options) (*Broker, error) {
	if opts.TLS == nil || opts.TLS.ClientCAs == nil || len(opts.TLS.Certificates) == 0 {
		return nil, errors.New("mqttapi: a TLS config with a server certificate and the enrollment root as ClientCAs is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	tlsCfg := opts.TLS.Clone()
	tlsCfg.ClientAuth = tls.VerifyClientCertIfGiven
	tlsCfg.MinVersion = tls.VersionTLS13
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{
		core: core, td: core.TrustDomain(), log: opts.Logger, sem: make(chan struct{}, maxInFlight),
		ctx: ctx, cancel: cancel,
		devices: map[string]deviceConn{}, sessions: map[string]binding{}, answers: map[string]answer{},
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = api.MaxMQTTMessageBytes
	caps.MaximumClientWritesPending = 64
	caps.RetainAvailable = 0
	caps.WildcardSubAvailable = 0
	b.srv = mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: opts.Logger})
	if err := b.srv.AddHook(&aclHook{b: b}, nil); err != nil {
		cancel()
		return nil, err
	}
	ln := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "enroll-tls", Address: opts.Listen, TLSConfig: tlsCfg})
	if err := b.srv.AddListener(ln); err != nil {
		cancel()
		return nil, fmt.Errorf("mqtt listener on %s: %w", opts.Listen, err)
	}
	if err := b.srv.Subscribe(api.MQTTTopicRoot+"+/req", 1, b.onRequest); err != nil {
		cancel()
		return nil, err
	}
	if err := b.srv.Serve(); err != nil {
		cancel()
		return nil, fmt.Errorf("starting mqtt broker: %w", err)
	}
	return b, nil
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string {
	if l, ok := b.srv.Listeners.Get("enroll-tls"); ok {
		return l.Address()
	}
	return ""
}

// Close stops the broker and waits for requests in flight.
func (b *Broker) Close() error {
	b.cancel()
	err := b.srv.Close()
	b.wg.Wait()
	return err
}

// onRequest runs in the publishing client's read loop: hand the request to
// a worker, or shed it.
func (b *Broker) onRequest(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	client, kind, ok := api.ClientOfTopic(pk.TopicName)
	if !ok || kind != "req" || client != pk.Origin {
		return // the ACL hook lets no one else publish here
	}
	payload := bytes.Clone(pk.Payload)
	select {
	case b.sem <- struct{}{}:
	default:
		b.reply(client, shed(payload))
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer func() { <-b.sem }()
		b.handle(client, payload)
	}()
}

func shed(payload []byte) *api.MQTTResponse {
	var env struct {
		ID string `json:"id"`
		Op string `json:"op"`
	}
	json.Unmarshal(payload, &env)
	return &api.MQTTResponse{ID: env.ID, Op: env.Op, Error: &api.Error{Code: api.CodeBusy, Message: "server busy; retry later", RetryAfterSeconds: busyRetryAfter}}
}

func (b *Broker) handle(client string, payload []byte) {
	ctx, cancel := context.WithTimeout(b.ctx, requestTimeout)
	defer cancel()
	var req api.MQTTRequest
	if err := api.Unmarshal(payload, &req); err != nil {
		var env struct{ ID, Op string }
		json.Unmarshal(payload, &env)
		b.reply(client, &api.MQTTResponse{ID: env.ID, Op: env.Op, Error: asAPIError(err, "")})
		return
	}
	// A redelivered request gets the answer already given.
	key := client + "/" + req.ID
	if prev, ok := b.answer(key); ok {
		b.publish(client, prev)
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
		resp.Begin, err = b.core.Begin(ctx, corr, req.Begin)
		if err == nil {
			b.bind(resp.Begin.SessionID, client, resp.Begin.ExpiresAt)
		}
	case api.OpFinish:
		resp.Sealed, err = b.finish(ctx, client, corr, &req)
	case api.OpWhoami:
		resp.Whoami, err = b.whoami(ctx, client)
	}
	if err != nil {
		resp = &api.MQTTResponse{ID: req.ID, Op: req.Op, Error: asAPIError(err, corr)}
		if resp.Error.Code == api.CodeInternal {
			b.log.Error("mqtt request failed", "client", client, "op", req.Op, "correlation_id", corr, "err", err)
		}
	}
	raw, merr := json.Marshal(resp)
	if merr != nil {
		return
	}
	// Remember answers worth repeating; transient failures are retried
	// afresh.
	if resp.Error == nil || resp.Error.Code.Permanent() {
		b.remember(key, raw)
	}
	b.publish(client, raw)
}

// finish checks the session belongs to this client, runs the shared finish
// and seals the answer with the session's key.
func (b *Broker) finish(ctx context.Context, client, corr string, req *api.MQTTRequest) ([]byte, error) {
	sid := req.Finish.SessionID
	b.mu.Lock()
	bd, ok := b.sessions[sid]
	b.mu.Unlock()
	if !ok || bd.client != client {
		return nil, api.Errorf(api.CodeNonceUnknownOrUsed, "session %s was not begun by this client over MQTT; start again with begin", sid)
	}
	key, ok := b.core.SealKey(sid)
	if !ok {
		return nil, api.Errorf(api.CodeNonceUnknownOrUsed, "session %s has no sealing key (expired or server restarted); start again with begin", sid)
	}
	fr, err := b.core.Finish(ctx, corr, req.Finish)
	if err != nil {
		return nil, err
	}
	plain, err := json.Marshal(fr)
	if err != nil {
		return nil, err
	}
	return sealing.Seal(key, sid, req.ID, plain)
}

func (b *Broker) whoami(ctx context.Context, client string) (*api.WhoamiResponse, error) {
	b.mu.Lock()
	leaf := b.devices[client].leaf
	b.mu.Unlock()
	if leaf == nil {
		return nil, api.Errorf(api.CodeUnauthenticated, "whoami needs a connection with a device certificate")
	}
	return b.core.Whoami(ctx, leaf)
}

func (b *Broker) bind(sessionID, client string, expires time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if len(b.sessions) > maxDedupe {
		for id, s := range b.sessions {
			if now.After(s.expires) {
				delete(b.sessions, id)
			}
		}
	}
	b.sessions[sessionID] = binding{client: client, expires: expires}
}

func (b *Broker) answer(key string) ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.answers[key]
	if !ok || time.Since(a.at) > dedupeTTL {
		return nil, false
	}
	return a.payload, true
}

func (b *Broker) remember(key string, payload []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.order) > 0 {
		oldest := b.order[0]
		if a, ok := b.answers[oldest]; ok && time.Since(a.at) < dedupeTTL && len(b.answers) < maxDedupe {
			break
		}
		delete(b.answers, oldest)
		b.order = b.order[1:]
	}
	b.answers[key] = answer{payload: payload, at: time.Now()}
	b.order = append(b.order, key)
}

func (b *Broker) reply(client string, resp *api.MQTTResponse) {
	raw, err := json.Marshal(resp)
	if err == nil {
		b.publish(client, raw)
	}
}

func (b *Broker) publish(client string, payload []byte) {
	if err := b.srv.Publish(api.ResponseTopic(client), payload, false, 1); err != nil {
		b.log.Warn("publishing mqtt answer", "client", client, "err", err)
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

// aclHook authenticates clients and confines each to its own topics. Its
// base denies everything it does not provide.
type aclHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *aclHook) ID() string { return "edgeenroll-acl" }

func (h *aclHook) Provides(hook byte) bool {
	return hook == mqtt.OnConnectAuthenticate || hook == mqtt.OnACLCheck || hook == mqtt.OnDisconnect
}

// OnConnectAuthenticate admits a certified device under its device ID, or
// a first-contact client under a bootstrap ID.
func (h *aclHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	if cl.Net.Inline {
		return true
	}
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return false
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) > 0 {
		id, err := pki.DeviceIDFromCertificate(st.VerifiedChains[0][0], h.b.td)
		if err != nil || id != cl.ID {
			h.b.log.Warn("mqtt connect refused: certificate does not match client id", "client", cl.ID, "remote", cl.Net.Remote)
			return false
		}
		h.b.mu.Lock()
		h.b.devices[cl.ID] = deviceConn{cl: cl, leaf: st.VerifiedChains[0][0]}
		h.b.mu.Unlock()
		return true
	}
	if len(st.PeerCertificates) > 0 {
		return false // presented but not verified: never happens with VerifyClientCertIfGiven
	}
	return len(cl.ID) > len(api.BootstrapClientPrefix) && cl.ID[:len(api.BootstrapClientPrefix)] == api.BootstrapClientPrefix && api.ValidMQTTClientID(cl.ID)
}

// OnACLCheck allows a client to publish only on its request topic and to
// subscribe only to its response topic.
func (h *aclHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if write {
		return topic == api.RequestTopic(cl.ID)
	}
	return topic == api.ResponseTopic(cl.ID)
}

func (h *aclHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.b.mu.Lock()
	defer h.b.mu.Unlock()
	// A takeover by a new connection with the same ID must not be undone
	// when the old one goes.
	if d, ok := h.b.devices[cl.ID]; ok && d.cl == cl {
		delete(h.b.devices, cl.ID)
	}
}
