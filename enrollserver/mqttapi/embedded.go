package mqttapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Options configure the embedded broker.
type Options struct {
	// Listen is the TLS listener address (host:port).
	Listen string
	// TLS must carry the server certificate and ClientCAs = the enrollment
	// root; client certificates are optional and verified when given.
	TLS    *tls.Config
	Logger *slog.Logger
	// Admission, if set, admits requests, to share one budget with the
	// HTTPS listener; nil gives the broker a controller of its own.
	Admission *admission.Controller
}

// Broker is the embedded broker and its handler.
type Broker struct {
	h   *handler
	td  string
	log *slog.Logger
	srv *mqtt.Server
	// unwatch stops config pushes.
	unwatch func()

	mu      sync.Mutex
	devices map[string]deviceConn // client ID → its certified connection
}

type deviceConn struct {
	cl   *mqtt.Client
	leaf *x509.Certificate // verified by TLS against the enrollment root
}

// New starts an embedded broker listening on opts.Listen.
func New(core *enrollserver.Server, opts Options) (*Broker, error) {
	if opts.TLS == nil || opts.TLS.ClientCAs == nil || (len(opts.TLS.Certificates) == 0 && opts.TLS.GetCertificate == nil) {
		return nil, errors.New("mqttapi: a TLS config with a server certificate and the enrollment root as ClientCAs is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	tlsCfg := opts.TLS.Clone()
	tlsCfg.ClientAuth = tls.VerifyClientCertIfGiven
	tlsCfg.MinVersion = tls.VersionTLS13
	b := &Broker{td: core.TrustDomain(), log: opts.Logger, devices: map[string]deviceConn{}}
	b.h = newHandler(core, opts.Logger, opts.Admission)
	b.h.certOf = b.certOf
	b.h.publish = func(client string, payload []byte) {
		if err := b.srv.Publish(api.ResponseTopic(client), payload, false, 1); err != nil {
			b.log.Warn("publishing mqtt answer", "client", client, "err", err)
		}
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = api.MaxMQTTMessageBytes
	caps.MaximumClientWritesPending = 64
	caps.RetainAvailable = 0
	caps.WildcardSubAvailable = 0
	caps.MaximumSessionExpiryInterval = brokerSessionExpiry
	caps.MaximumClients = maxBrokerClients
	b.srv = mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: opts.Logger})
	fail := func(err error) (*Broker, error) {
		b.h.close()
		return nil, err
	}
	if err := b.srv.AddHook(&aclHook{b: b}, nil); err != nil {
		return fail(err)
	}
	ln := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "enroll-tls", Address: opts.Listen, TLSConfig: tlsCfg})
	if err := b.srv.AddListener(ln); err != nil {
		return fail(fmt.Errorf("mqtt listener on %s: %w", opts.Listen, err))
	}
	onRequest := func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		// The ACL hook let only the topic's own client publish here.
		if client, _, ok := api.ClientOfTopic(pk.TopicName); ok && client == pk.Origin {
			b.h.dispatch(pk.TopicName, bytes.Clone(pk.Payload))
		}
	}
	for i, filter := range []string{api.MQTTDeviceRoot + "+/req", api.MQTTBootstrapRoot + "+/req"} {
		if err := b.srv.Subscribe(filter, i+1, onRequest); err != nil {
			return fail(err)
		}
	}
	if err := b.srv.Serve(); err != nil {
		return fail(fmt.Errorf("starting mqtt broker: %w", err))
	}
	b.unwatch = core.OnConfigChange(b.pushConfig)
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
	b.unwatch()
	err := b.srv.Close()
	b.h.close()
	return err
}

func (b *Broker) certOf(client string) *x509.Certificate {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.devices[client].leaf
}

// aclHook authenticates clients and confines each to its own topics. Its
// base (mqtt.HookBase) denies what it does not provide.
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
		leaf := st.VerifiedChains[0][0]
		id, err := pki.DeviceIDFromCertificate(leaf, h.b.td)
		if err != nil || id != cl.ID {
			h.b.log.Warn("mqtt connect refused: certificate does not match client id", "client", cl.ID, "remote", cl.Net.Remote)
			return false
		}
		// A revoked certificate (or device) does not connect: it would
		// get the config pushes of the device's response topic.
		ctx, cancel := context.WithTimeout(context.Background(), connectCheckTimeout)
		_, err = h.b.h.core.Whoami(ctx, leaf)
		cancel()
		if err != nil {
			h.b.log.Warn("mqtt connect refused", "client", cl.ID, "remote", cl.Net.Remote, "err", err)
			return false
		}
		h.b.mu.Lock()
		h.b.devices[cl.ID] = deviceConn{cl: cl, leaf: leaf}
		h.b.mu.Unlock()
		return true
	}
	return len(st.PeerCertificates) == 0 && strings.HasPrefix(cl.ID, api.BootstrapClientPrefix) && api.ValidMQTTClientID(cl.ID)
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
