package mqttapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
)

// ExternalOptions configure the connection to an external broker.
type ExternalOptions struct {
	// BrokerURL is mqtts://host:port of the broker's mutual-TLS listener.
	BrokerURL string
	// TLS carries the broker's CA (RootCAs) and enrolld's own client
	// certificate, whose identity the broker's ACL grants the request and
	// response topics of every client.
	TLS *tls.Config
	// ClientID of enrolld's connection.
	ClientID string
	Logger   *slog.Logger
	// Admission, if set, admits requests, to share one budget with the
	// HTTPS listener; nil gives the connection a controller of its own.
	Admission *admission.Controller
}

// External serves enrollment through a broker that someone else runs. The
// broker authenticates devices and enforces the topic ACLs; see
// deploy/mosquitto. The handler is the one the embedded broker uses.
type External struct {
	h       *handler
	c       paho.Client
	log     *slog.Logger
	unwatch func() // stops config pushes
}

// NewExternal connects to the broker, subscribes to every client's request
// topic and serves until Close. It reconnects (and resubscribes) with
// backoff on its own when the broker goes away.
func NewExternal(ctx context.Context, core *enrollserver.Server, opts ExternalOptions) (*External, error) {
	u, err := url.Parse(opts.BrokerURL)
	if err != nil || u.Scheme != "mqtts" || u.Host == "" {
		return nil, fmt.Errorf("mqttapi: broker URL %q: want mqtts://host:port", opts.BrokerURL)
	}
	if opts.TLS == nil || (len(opts.TLS.Certificates) == 0 && opts.TLS.GetClientCertificate == nil) {
		return nil, errors.New("mqttapi: the external broker needs enrolld's client certificate")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ClientID == "" {
		opts.ClientID = "enrolld"
	}
	e := &External{h: newHandler(core, opts.Logger, opts.Admission), log: opts.Logger}
	e.h.publish = func(client string, payload []byte) {
		tok := e.c.Publish(api.ResponseTopic(client), 1, false, payload)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			opts.Logger.Warn("publishing mqtt answer", "client", client, "err", tok.Error())
		}
	}
	onRequest := func(_ paho.Client, m paho.Message) { e.h.dispatch(m.Topic(), m.Payload()) }
	subscribe := func(c paho.Client) {
		tok := c.SubscribeMultiple(map[string]byte{api.MQTTDeviceRoot + "+/req": 1, api.MQTTBootstrapRoot + "+/req": 1}, onRequest)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			opts.Logger.Error("subscribing to enrollment requests", "err", tok.Error())
		}
	}
	tlsCfg := opts.TLS.Clone()
	tlsCfg.MinVersion = tls.VersionTLS12 // brokers such as mosquitto 2.0 may stop at 1.2
	o := paho.NewClientOptions().AddBroker("tls://" + u.Host).SetClientID(opts.ClientID).SetTLSConfig(tlsCfg).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).SetMaxReconnectInterval(30 * time.Second).
		SetKeepAlive(30 * time.Second).SetOrderMatters(false).
		SetOnConnectHandler(subscribe).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			opts.Logger.Warn("lost the mqtt broker; reconnecting", "broker", opts.BrokerURL, "err", err)
		})
	e.c = paho.NewClient(o)
	tok := e.c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			e.h.close()
			return nil, fmt.Errorf("connecting to %s: %w", opts.BrokerURL, err)
		}
	case <-ctx.Done():
		e.c.Disconnect(0)
		e.h.close()
		return nil, ctx.Err()
	}
	e.unwatch = core.OnConfigChange(e.pushConfig)
	return e, nil
}

// Close disconnects and waits for requests in flight.
func (e *External) Close() error {
	e.unwatch()
	e.c.Disconnect(250)
	e.h.close()
	return nil
}
