package e2e_test

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device/supervise"
)

// startMosquitto runs mosquitto with the repository's configuration
// (deploy/mosquitto), its paths pointed at certDir and its two listeners
// moved to free loopback ports. It returns the bootstrap and device ports.
func startMosquitto(t *testing.T, certDir string) (bootPort, devPort string) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr != nil {
			t.Fatal("mosquitto is not installed: run scripts/deps.sh (apt-get install mosquitto)")
		}
		bin = "/usr/sbin/mosquitto"
	}
	_, bootPort, _ = net.SplitHostPort(freeAddr(t))
	_, devPort, _ = net.SplitHostPort(freeAddr(t))
	conf, err := os.ReadFile("../deploy/mosquitto/mosquitto.conf")
	if err != nil {
		t.Fatal(err)
	}
	c := strings.ReplaceAll(string(conf), "/etc/mosquitto/edgeenroll", certDir)
	c = strings.Replace(c, "listener 8883\n", "listener "+bootPort+" 127.0.0.1\n", 1)
	c = strings.Replace(c, "listener 8884\n", "listener "+devPort+" 127.0.0.1\n", 1)
	if os.Geteuid() == 0 {
		// Started as root, mosquitto would switch to its own user, which
		// cannot read the test's private temporary directory.
		c = "user root\n" + c
	}
	for _, acl := range []string{"bootstrap.acl", "devices.acl"} {
		b, err := os.ReadFile("../deploy/mosquitto/" + acl)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(certDir, acl), string(b))
	}
	confPath := filepath.Join(certDir, "mosquitto.conf")
	writeFile(t, confPath, c)
	cmd := exec.Command(bin, "-c", confPath)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", log)
		}
	})
	for _, p := range []string{bootPort, devPort} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+p, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("mosquitto does not listen on %s:\n%s", p, log)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return bootPort, devPort
}

// TestMosquitto enrolls a device through a real mosquitto with the
// repository's configuration and ACLs, enrolld connected as a client, and
// checks that a first-contact client cannot eavesdrop on anyone.
func TestMosquitto(t *testing.T) {
	tpms, mfrRoot := manufacture(t, 1)
	dataDir := filepath.Join(t.TempDir(), "enrolld")
	certDir := filepath.Join(t.TempDir(), "broker")
	run(t, false, bins.enrolld, "ca", "init", "--data-dir", dataDir)
	run(t, false, bins.enrolld, "broker-cert", "--data-dir", dataDir, "--host", "localhost", "--out", certDir)
	bootPort, devPort := startMosquitto(t, certDir)

	srv := &enrolld{t: t, dataDir: dataDir, listen: freeAddr(t), log: &syncBuffer{},
		args: []string{"--manufacturer-roots", mfrRoot, "--mqtt-broker", "mqtts://localhost:" + devPort}}
	srv.start()
	t.Cleanup(func() {
		srv.stop()
		if t.Failed() {
			t.Logf("enrolld log:\n%s", srv.log)
		}
	})

	// An eavesdropper on the bootstrap listener subscribes to everything
	// it can name before the device starts.
	spy := mqttClient(t, "127.0.0.1:"+bootPort, srv.rootCA(), bootstrapID())
	msgs := make(chan paho.Message, 64)
	for _, filter := range []string{"enroll/#", "enroll/v1/boot/+/resp", "enroll/v1/dev/+/resp", "#"} {
		spy.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { msgs <- m }).WaitTimeout(5 * time.Second)
	}

	agentDir := t.TempDir()
	// Twice: first contact on the bootstrap listener, then a renewal (and
	// the whoami) as the certified device on the mutual-TLS listener.
	for range 2 {
		out, _ := run(t, false, bins.agentSim, "enroll", "--server", "mqtts://localhost:"+bootPort,
			"--mqtt-device-server", "mqtts://localhost:"+devPort, "--root-ca", srv.rootCA(),
			"--tpm", "simulator:"+tpms[0], "--data-dir", agentDir, "--event-log", "", "--attempts", "3", "--timeout", "60s")
		checkEnrolled(t, out, agentDir)
	}

	// The spy's publishes on someone else's request topics never reach
	// enrolld: it logs every request it handles by its message ID.
	deviceID := strings.TrimSpace(func() string {
		id, _ := run(t, false, bins.agentSim, "identity", "--tpm", "simulator:"+tpms[0])
		return id
	}())
	for i, topic := range []string{api.RequestTopic(deviceID), api.RequestTopic(bootstrapID())} {
		// A well-formed begin: handled, it would be refused and logged
		// with its correlation ID.
		payload, _ := json.Marshal(&api.MQTTRequest{ID: fmt.Sprintf("spy-publish-%d", i), Op: api.OpBegin,
			CorrelationID: fmt.Sprintf("spy-publish-%d", i), Begin: &api.BeginRequest{EKPublic: []byte{1},
				AK: api.AttestationParameters{Public: []byte{1}, CreateData: []byte{1}, CreateAttestation: []byte{1}, CreateSignature: []byte{1}}}})
		spy.Publish(topic, 1, false, payload).WaitTimeout(5 * time.Second)
	}

	select {
	case m := <-msgs:
		t.Fatalf("the bootstrap eavesdropper received a message on %s", m.Topic())
	case <-time.After(time.Second):
	}
	if strings.Contains(srv.log.String(), "spy-publish") {
		t.Errorf("enrolld handled a request published on another client's topic:\n%s", srv.log)
	}
	// Config push through mosquitto: an agent running as the certified
	// device receives a new version an operator publishes.
	a := startAgent(t, "mqtts://localhost:"+bootPort, srv.rootCA(), tpms[0], agentDir,
		"--mqtt-device-server", "mqtts://localhost:"+devPort)
	before := a.waitReady(t, 60*time.Second)
	cfgFile := filepath.Join(t.TempDir(), "cfg.json")
	writeFile(t, cfgFile, `{"pushed": true}`)
	var version uint64
	for i := 0; ; i++ { // the agent connects as the device shortly after ready
		run(t, false, bins.ctl, "config", "set", "--device", deviceID, cfgFile, "--comment", fmt.Sprintf("push %d", i),
			"--server", srv.url(), "--admin-dir", filepath.Join(dataDir, "admin"))
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if s, err := supervise.ReadStatus(filepath.Join(agentDir, "status.json")); err == nil && s.BundleVersion > before.BundleVersion {
				version = s.BundleVersion
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if version != 0 {
			break
		}
		if i == 4 {
			t.Fatalf("no pushed config reached the agent:\n%s", a.stderr)
		}
	}
	if s, _ := supervise.ReadStatus(filepath.Join(agentDir, "status.json")); s.CertSerial != before.CertSerial {
		t.Error("the config push re-enrolled the device")
	}
	a.stop()

	// A client without a certificate cannot claim the device listener.
	if _, err := tryMQTT("127.0.0.1:"+devPort, srv.rootCA(), bootstrapID()); err == nil {
		t.Error("connected to the device listener without a certificate")
	}
}

func bootstrapID() string {
	var b [16]byte
	rand.Read(b[:])
	return api.BootstrapClientPrefix + hex.EncodeToString(b[:])
}

func tryMQTT(addr, rootCA, id string) (paho.Client, error) {
	pemBytes, err := os.ReadFile(rootCA)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID(id).
		SetTLSConfig(&tls.Config{RootCAs: roots, ServerName: "localhost"}).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	tok.WaitTimeout(10 * time.Second)
	return c, tok.Error()
}

func mqttClient(t *testing.T, addr, rootCA, id string) paho.Client {
	t.Helper()
	c, err := tryMQTT(addr, rootCA, id)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}
