package device

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/sealing"
)

// mqttConnectTimeout bounds connecting to the broker.
const mqttConnectTimeout = 10 * time.Second

// NewMQTTTransport speaks the protocol over an MQTT broker, trusting only
// roots for the broker's TLS certificate. Without a valid device
// certificate it connects to bootstrapURL (mqtts://host:port) under a
// random bootstrap ID that may only begin and finish enrollment; with one,
// it connects to deviceURL as the device (client ID = device ID, the
// certificate's key in the TPM). The embedded broker serves both on one
// port (deviceURL = bootstrapURL); mosquitto needs two listeners. Finish
// answers arrive sealed and are opened with the session's key.
func NewMQTTTransport(bootstrapURL, deviceURL string, roots *x509.CertPool, certs CertificateSource) (Transport, error) {
	boot, bootHost, err := brokerAddr(bootstrapURL)
	if err != nil {
		return nil, err
	}
	if deviceURL == "" {
		deviceURL = bootstrapURL
	}
	dev, devHost, err := brokerAddr(deviceURL)
	if err != nil {
		return nil, err
	}
	var b [16]byte
	rand.Read(b[:])
	return &mqttTransport{
		bootBroker: boot, bootHost: bootHost, devBroker: dev, devHost: devHost, roots: roots, certs: certs,
		bootID:  api.BootstrapClientPrefix + hex.EncodeToString(b[:]),
		pending: map[string]chan *api.MQTTResponse{},
		pushes:  make(chan string, 1),
	}, nil
}

func brokerAddr(raw string) (broker, host string, err error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "mqtts" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", "", fmt.Errorf("MQTT broker URL %q: want mqtts://host:port", raw)
	}
	host, _, err = net.SplitHostPort(u.Host)
	if err != nil {
		return "", "", fmt.Errorf("MQTT broker URL %q: %w", raw, err)
	}
	return "tls://" + u.Host, host, nil
}

type mqttTransport struct {
	bootBroker, bootHost string
	devBroker, devHost   string
	roots                *x509.CertPool
	certs                CertificateSource
	bootID               string

	mu       sync.Mutex // guards the fields below
	client   paho.Client
	clientID string
	pending  map[string]chan *api.MQTTResponse

	pushes chan string // pushed bundles, newest kept
}

// Pushes delivers config bundles the server pushes to this device while
// Listen keeps it connected. Unverified: the agent checks each.
func (t *mqttTransport) Pushes() <-chan string { return t.pushes }

// CertificateChanged makes the next request reconnect, so the broker sees
// the new certificate.
func (t *mqttTransport) CertificateChanged() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.client != nil {
		t.client.Disconnect(0)
		t.client = nil
	}
}

// Listen keeps a connection under the device identity open while the
// device holds a valid certificate, so pushes arrive, reconnecting with
// capped backoff until ctx ends.
func (t *mqttTransport) Listen(ctx context.Context) {
	backoff := time.Second
	for {
		wait := time.Second // until the device holds a certificate
		if c, err := t.certs.TLSCertificate(); err == nil && c.Leaf != nil && time.Now().Before(c.Leaf.NotAfter) {
			cctx, cancel := context.WithTimeout(ctx, mqttConnectTimeout)
			_, _, err := t.connect(cctx)
			cancel()
			if err != nil {
				// Full jitter, so a fleet that lost its broker does not
				// come back in lockstep.
				wait = time.Duration(mrand.Int64N(int64(backoff))) + 100*time.Millisecond
				backoff = min(2*backoff, time.Minute)
			} else {
				wait, backoff = 5*time.Second, time.Second
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (t *mqttTransport) Begin(ctx context.Context, corr string, req *api.BeginRequest) (*api.BeginResponse, error) {
	resp, err := t.request(ctx, &api.MQTTRequest{Op: api.OpBegin, CorrelationID: corr, Begin: req})
	if err != nil {
		return nil, err
	}
	if resp.Begin == nil {
		return nil, &TransientError{Err: errors.New("mqtt: begin answer without a begin body")}
	}
	return resp.Begin, nil
}

func (t *mqttTransport) Finish(ctx context.Context, corr string, req *api.FinishRequest, sealKey SealKeyFunc) (*api.FinishResponse, error) {
	msg := &api.MQTTRequest{Op: api.OpFinish, CorrelationID: corr, Finish: req}
	resp, err := t.request(ctx, msg)
	if err != nil {
		return nil, err
	}
	key, err := sealKey()
	if err != nil {
		return nil, fmt.Errorf("deriving the sealing key: %w", err)
	}
	plain, err := sealing.Open(key, req.SessionID, msg.ID, resp.Sealed)
	if err != nil {
		// Tampered in transit: ask again; the server answers a repeated
		// finish with the same result.
		return nil, &TransientError{Err: fmt.Errorf("mqtt: finish answer: %w", err)}
	}
	var fr api.FinishResponse
	if err := json.Unmarshal(plain, &fr); err != nil {
		return nil, fmt.Errorf("mqtt: decoding finish answer: %w", err)
	}
	return &fr, nil
}

func (t *mqttTransport) Whoami(ctx context.Context, corr string) (*api.WhoamiResponse, error) {
	resp, err := t.request(ctx, &api.MQTTRequest{Op: api.OpWhoami, CorrelationID: corr})
	if err != nil {
		return nil, err
	}
	if resp.Whoami == nil {
		return nil, &TransientError{Err: errors.New("mqtt: whoami answer without a body")}
	}
	return resp.Whoami, nil
}

func (t *mqttTransport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.client != nil {
		t.client.Disconnect(250)
		t.client = nil
	}
	return nil
}

// request publishes req on this client's request topic and waits for the
// answer of the same ID. Refusals come back as *api.Error (wrapped in
// *TransientError when retrying could help).
func (t *mqttTransport) request(ctx context.Context, req *api.MQTTRequest) (*api.MQTTResponse, error) {
	var b [12]byte
	rand.Read(b[:])
	req.ID = hex.EncodeToString(b[:])
	payload, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if len(payload) > api.MaxMQTTMessageBytes {
		return nil, fmt.Errorf("mqtt: %s request of %d bytes exceeds %d", req.Op, len(payload), api.MaxMQTTMessageBytes)
	}
	client, id, err := t.connect(ctx)
	if err != nil {
		return nil, &TransientError{Err: err}
	}
	ch := make(chan *api.MQTTResponse, 1)
	t.mu.Lock()
	t.pending[req.ID] = ch
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.pending, req.ID)
		t.mu.Unlock()
	}()
	tok := client.Publish(api.RequestTopic(id), 1, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			t.drop(client)
			return nil, &TransientError{Err: fmt.Errorf("mqtt: publishing %s: %w", req.Op, err)}
		}
	case <-ctx.Done():
		return nil, &TransientError{Err: fmt.Errorf("mqtt: publishing %s: %w", req.Op, ctx.Err())}
	}
	select {
	case resp := <-ch:
		if resp.Error != nil {
			return nil, mqttError(req.Op, resp.Error)
		}
		return resp, nil
	case <-ctx.Done():
		return nil, &TransientError{Err: fmt.Errorf("mqtt: waiting for the %s answer: %w", req.Op, ctx.Err())}
	}
}

// mqttError is the error of a refusal answered over MQTT. The broker relays
// error answers unsealed, so it could forge one: revoked and denied, which
// over HTTPS (server-authenticated) make the device give up its
// certificate, are not final here. The device asks again after its
// backoff, and a server that did revoke it refuses again.
func mqttError(op string, e *api.Error) error {
	err := fmt.Errorf("mqtt %s: %w", op, e)
	if !e.Code.Permanent() || e.Code == api.CodeRevoked || e.Code == api.CodeDenied {
		return &TransientError{Err: err, RetryAfter: retryAfter(e.RetryAfterSeconds)}
	}
	return err
}

// connect returns a connection under the identity the device should use
// now, reconnecting when it changed (a new certificate) or was lost.
func (t *mqttTransport) connect(ctx context.Context) (paho.Client, string, error) {
	id, cert := t.bootID, (*tls.Certificate)(nil)
	if c, err := t.certs.TLSCertificate(); err == nil && c.Leaf != nil && time.Now().Before(c.Leaf.NotAfter) {
		id, cert = c.Leaf.Subject.CommonName, c
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.client != nil && t.clientID == id && t.client.IsConnectionOpen() {
		return t.client, id, nil
	}
	if t.client != nil {
		t.client.Disconnect(0)
		t.client = nil
	}
	broker, host := t.bootBroker, t.bootHost
	tlsCfg := &tls.Config{RootCAs: t.roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		broker, host = t.devBroker, t.devHost
		tlsCfg.Certificates = []tls.Certificate{*cert}
	}
	tlsCfg.ServerName = host
	opts := paho.NewClientOptions().
		AddBroker(broker).
		SetClientID(id).
		SetTLSConfig(tlsCfg).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectTimeout(mqttConnectTimeout).
		SetKeepAlive(30 * time.Second).
		SetOrderMatters(false)
	client := paho.NewClient(opts)
	if err := waitToken(ctx, client.Connect()); err != nil {
		return nil, "", fmt.Errorf("mqtt: connecting to %s as %s: %w", broker, id, err)
	}
	if err := waitToken(ctx, client.Subscribe(api.ResponseTopic(id), 1, t.onResponse)); err != nil {
		client.Disconnect(0)
		return nil, "", fmt.Errorf("mqtt: subscribing to %s: %w", api.ResponseTopic(id), err)
	}
	t.client, t.clientID = client, id
	return client, id, nil
}

func (t *mqttTransport) drop(c paho.Client) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.client == c {
		c.Disconnect(0)
		t.client = nil
	}
}

func (t *mqttTransport) onResponse(_ paho.Client, m paho.Message) {
	if len(m.Payload()) > api.MaxResponseBytes*2 {
		return
	}
	var resp api.MQTTResponse
	if err := json.Unmarshal(m.Payload(), &resp); err != nil || resp.Validate() != nil {
		return
	}
	if resp.Op == api.OpConfig && resp.Bundle != "" {
		select { // keep the newest: drop an unread older push
		case <-t.pushes:
		default:
		}
		select {
		case t.pushes <- resp.Bundle:
		default:
		}
		return
	}
	t.mu.Lock()
	ch := t.pending[resp.ID]
	t.mu.Unlock()
	if ch != nil {
		select {
		case ch <- &resp:
		default:
		}
	}
}

func waitToken(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}
