package mqttapi_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/enrollservertest"
	"github.com/edgeenroll/edgeenroll/enrollserver/mqttapi"
	"github.com/edgeenroll/edgeenroll/pki"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

type env struct {
	ca     *pki.CA
	broker *mqttapi.Broker
	url    string
	addr   string
	mfr    *tpmsim.Manufacturer
	core   *enrollserver.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	mfr, err := tpmsim.NewManufacturer("test vendor")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(mfr.Certificate)
	c := enrollservertest.New(t, enrollserver.Config{ManufacturerRoots: roots}, nil)
	core, ca := c.Server, c.CA
	cert, err := ca.IssueServer([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := mqttapi.New(core, mqttapi.Options{Listen: "127.0.0.1:0", TLS: &tls.Config{
		Certificates: []tls.Certificate{*cert}, ClientCAs: ca.RootPool(), ClientAuth: tls.VerifyClientCertIfGiven,
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	_, port, _ := net.SplitHostPort(b.Addr())
	return &env{ca: ca, broker: b, url: "mqtts://localhost:" + port, addr: b.Addr(), mfr: mfr, core: core}
}

// agent is a simulated-TPM agent enrolling over the broker; wrap, if
// given, wraps its transport.
func (e *env) agent(t *testing.T, wrap ...func(device.Transport) device.Transport) *device.Agent {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tpm")
	if _, err := tpmsim.ManufactureState(dir, e.mfr); err != nil {
		t.Fatalf("the TPM simulator is required (cgo): %v", err)
	}
	sim, err := tpmsim.OpenState(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := device.New(context.Background(), device.Config{
		ServerURL: e.url, Roots: e.ca.RootPool(), TPM: sim, CachePath: filepath.Join(t.TempDir(), "agent.db"),
		RequestTimeout: 10 * time.Second, Logger: slog.New(slog.DiscardHandler),
		Transport: func(certs device.CertificateSource) (device.Transport, error) {
			tr, err := device.NewMQTTTransport(e.url, "", e.ca.RootPool(), certs)
			for _, w := range wrap {
				tr = w(tr)
			}
			return tr, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// TestEnrollOverMQTT: a full enrollment through the embedded broker, the
// answer sealed to the TPM, then an mTLS whoami under the device identity.
func TestEnrollOverMQTT(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	res, err := a.Enroll(context.Background(), device.RetryPolicy{Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	who, err := a.Whoami(context.Background())
	if err != nil {
		t.Fatalf("whoami over MQTT with the TPM-backed certificate: %v", err)
	}
	if who.DeviceID != res.DeviceID || who.Serial != res.Leaf.SerialNumber.Text(16) {
		t.Errorf("whoami = %+v, want device %s", who, res.DeviceID)
	}
	// Renewal: re-attestation under the device identity.
	res2, err := a.Enroll(context.Background(), device.RetryPolicy{Attempts: 1})
	if err != nil {
		t.Fatalf("renewal over MQTT: %v", err)
	}
	if res2.Leaf.SerialNumber.Cmp(res.Leaf.SerialNumber) == 0 {
		t.Error("renewal returned the same certificate")
	}
}

// client is a raw MQTT client for ACL tests.
type client struct {
	c    paho.Client
	id   string
	msgs chan paho.Message
}

func (e *env) connect(t *testing.T, id string, cert *tls.Certificate) (*client, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.ca.RootPool(), ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	cl := &client{id: id, msgs: make(chan paho.Message, 16)}
	opts := paho.NewClientOptions().AddBroker("tls://" + e.addr).SetClientID(id).SetTLSConfig(cfg).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { cl.msgs <- m })
	cl.c = paho.NewClient(opts)
	tok := cl.c.Connect()
	tok.WaitTimeout(5 * time.Second)
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { cl.c.Disconnect(0) })
	return cl, nil
}

func bootID() string {
	var b [16]byte
	rand.Read(b[:])
	return api.BootstrapClientPrefix + hex.EncodeToString(b[:])
}

func (c *client) subscribe(t *testing.T, topic string) {
	t.Helper()
	tok := c.c.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) { c.msgs <- m })
	tok.WaitTimeout(5 * time.Second)
}

func (c *client) publish(t *testing.T, topic string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	tok := c.c.Publish(topic, 1, false, b)
	tok.WaitTimeout(5 * time.Second)
}

func (c *client) next(timeout time.Duration) (paho.Message, bool) {
	select {
	case m := <-c.msgs:
		return m, true
	case <-time.After(timeout):
		return nil, false
	}
}

// begin is a syntactically valid begin request; its EK is a software key,
// so the server answers with a refusal: enough to see who gets the answer.
func beginRequest(id string) *api.MQTTRequest {
	return &api.MQTTRequest{ID: id, Op: api.OpBegin, Begin: &api.BeginRequest{
		EKPublic: []byte{1}, AK: api.AttestationParameters{Public: []byte{1}, CreateData: []byte{1}, CreateAttestation: []byte{1}, CreateSignature: []byte{1}},
	}}
}

// TestACL: clients are confined to their own topics; what the broker does
// not deliver is what counts, not the SUBACK.
func TestACL(t *testing.T) {
	e := newEnv(t)
	a, err := e.connect(t, bootID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.connect(t, bootID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a.subscribe(t, api.ResponseTopic(a.id))
	b.subscribe(t, api.ResponseTopic(a.id)) // B eavesdrops on A's answers
	b.subscribe(t, api.MQTTTopicRoot+"#")   // and on everything
	b.subscribe(t, api.MQTTBootstrapRoot+"+/resp")

	a.publish(t, api.RequestTopic(a.id), beginRequest("req-a-0001"))
	if m, ok := a.next(5 * time.Second); !ok {
		t.Fatal("A got no answer to its own request")
	} else {
		var resp api.MQTTResponse
		if err := json.Unmarshal(m.Payload(), &resp); err != nil || resp.ID != "req-a-0001" || resp.Error == nil {
			t.Fatalf("A's answer: %s", m.Payload())
		}
	}
	if m, ok := b.next(500 * time.Millisecond); ok {
		t.Fatalf("B received a message on %s", m.Topic())
	}

	// B publishing on A's request topic is not processed: A gets nothing.
	b.publish(t, api.RequestTopic(a.id), beginRequest("req-b-spoof"))
	if m, ok := a.next(500 * time.Millisecond); ok {
		t.Fatalf("a request B published on A's topic was answered to A: %s", m.Payload())
	}

	// Identities: a device ID without its certificate, and a malformed
	// bootstrap ID, are refused at connect.
	if _, err := e.connect(t, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", nil); err == nil {
		t.Error("connected under a device ID without the device's certificate")
	}
	if _, err := e.connect(t, "someone", nil); err == nil {
		t.Error("connected under an ID that is neither a device nor bootstrap ID")
	}
}

// realBegin is a valid begin request from a simulated TPM whose EK the
// environment's manufacturer certified.
func (e *env) realBegin(t *testing.T) *api.BeginRequest {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tpm")
	der, err := tpmsim.ManufactureState(dir, e.mfr)
	if err != nil {
		t.Fatalf("the TPM simulator is required (cgo): %v", err)
	}
	sim, err := tpmsim.OpenState(dir)
	if err != nil {
		t.Fatal(err)
	}
	tpm, err := goattest.OpenTPM(&goattest.OpenConfig{CommandChannel: sim})
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	eks, err := tpm.EKs()
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tpm.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA})
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close(tpm)
	ekDER, _ := x509.MarshalPKIXPublicKey(eks[0].Public)
	p := ak.AttestationParameters()
	return &api.BeginRequest{EKPublic: ekDER, EKCertificate: der,
		AK: api.AttestationParameters{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature}}
}

// TestRedeliveryIsIdempotent: a request redelivered with the same ID (QoS
// 1) is processed once: the same session comes back; a new ID begins anew.
func TestRedeliveryIsIdempotent(t *testing.T) {
	e := newEnv(t)
	begin := e.realBegin(t)
	c, err := e.connect(t, bootID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.subscribe(t, api.ResponseTopic(c.id))
	session := func(id string) string {
		t.Helper()
		c.publish(t, api.RequestTopic(c.id), &api.MQTTRequest{ID: id, Op: api.OpBegin, Begin: begin})
		m, ok := c.next(5 * time.Second)
		if !ok {
			t.Fatal("missing answer")
		}
		var resp api.MQTTResponse
		if err := json.Unmarshal(m.Payload(), &resp); err != nil || resp.Begin == nil {
			t.Fatalf("answer %s, %v", m.Payload(), err)
		}
		return resp.Begin.SessionID
	}
	first, again, other := session("req-dup-0001"), session("req-dup-0001"), session("req-new-0002")
	if first != again {
		t.Errorf("a redelivered begin opened a second session: %s then %s", first, again)
	}
	if other == first {
		t.Error("a new request reused the old session")
	}
}

// TestFinishBoundToClient: a finish for a session another client began is
// refused, even with valid evidence (here: any well-formed answer).
func TestFinishBoundToClient(t *testing.T) {
	e := newEnv(t)
	begin := e.realBegin(t)
	a, err := e.connect(t, bootID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.connect(t, bootID(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a.subscribe(t, api.ResponseTopic(a.id))
	b.subscribe(t, api.ResponseTopic(b.id))
	a.publish(t, api.RequestTopic(a.id), &api.MQTTRequest{ID: "req-a-begin1", Op: api.OpBegin, Begin: begin})
	m, ok := a.next(5 * time.Second)
	if !ok {
		t.Fatal("no begin answer")
	}
	var br api.MQTTResponse
	json.Unmarshal(m.Payload(), &br)
	if br.Begin == nil {
		t.Fatalf("begin refused: %s", m.Payload())
	}
	finish := &api.FinishRequest{SessionID: br.Begin.SessionID, ActivationProof: make([]byte, 32),
		Quote: api.Quote{Quote: []byte{1}, Signature: []byte{1}}, PCRs: []api.PCR{{Index: 0, Digest: make([]byte, 32)}},
		Key: api.CertificationParameters{Public: []byte{1}, CreateAttestation: []byte{1}, CreateSignature: []byte{1}}, CSR: []byte{1}}
	b.publish(t, api.RequestTopic(b.id), &api.MQTTRequest{ID: "req-b-finish", Op: api.OpFinish, Finish: finish})
	m, ok = b.next(5 * time.Second)
	if !ok {
		t.Fatal("no finish answer")
	}
	var fr api.MQTTResponse
	json.Unmarshal(m.Payload(), &fr)
	if fr.Error == nil || fr.Error.Code != api.CodeNonceUnknownOrUsed {
		t.Fatalf("finish of another client's session: %s", m.Payload())
	}
}

// waitOrNot returns the first status satisfying ok within limit, or the zero
// status.
func waitOrNot(ch <-chan device.Status, limit time.Duration, ok func(device.Status) bool) device.Status {
	deadline := time.After(limit)
	for {
		select {
		case s := <-ch:
			if ok(s) {
				return s
			}
		case <-deadline:
			return device.Status{}
		}
	}
}

// TestConfigPush: a new config version for a device reaches it over its
// MQTT connection while it idles ready, and it applies it.
func TestConfigPush(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	statuses := make(chan device.Status, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		a.Run(ctx, device.RunOptions{OnStatus: func(s device.Status) {
			select {
			case statuses <- s:
			default:
			}
		}})
		close(done)
	}()
	defer func() { cancel(); <-done }()
	wait := func(ok func(device.Status) bool) device.Status {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case s := <-statuses:
				if ok(s) {
					return s
				}
			case <-deadline:
				t.Fatal("no matching status")
			}
		}
	}
	first := wait(func(s device.Status) bool { return s.Ready })
	// The agent connects under its device identity shortly after it is
	// ready; publish versions until one is pushed to it (bounded).
	call := &enrollserver.Call{CorrelationID: "push", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "alice", Role: pki.RoleOperator}}
	var got device.Status
	for i := 0; ; i++ {
		cv, err := e.core.SetConfig(context.Background(), call, &api.ConfigSetRequest{
			ConfigScope: api.ConfigScope{DeviceID: first.DeviceID}, Config: json.RawMessage(fmt.Sprintf(`{"pushed":%d}`, i))})
		if err != nil {
			t.Fatal(err)
		}
		got = waitOrNot(statuses, 3*time.Second, func(s device.Status) bool { return s.BundleVersion == cv.Version })
		if got.BundleVersion == cv.Version {
			break
		}
		if i == 5 {
			t.Fatalf("no pushed version reached the device")
		}
	}
	if got.CertSerial != first.CertSerial {
		t.Error("a config push re-enrolled the device")
	}
}
