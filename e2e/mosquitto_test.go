package e2e_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
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
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device/supervise"
	"github.com/edgeenroll/edgeenroll/pki"
)

// startMosquitto runs mosquitto with the repository's configuration
// (deploy/mosquitto), its paths pointed at certDir and its two listeners
// moved to free loopback ports, and the device listener's crlfile line
// enabled for crlFile unless it is "". It returns the bootstrap and device
// ports, and reload, which sends mosquitto SIGHUP.
func startMosquitto(t *testing.T, certDir, crlFile string) (bootPort, devPort string, reload func()) {
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
	if crlFile != "" {
		const line = "#crlfile /var/lib/enrolld/crl.pem\n"
		if !strings.Contains(c, line) {
			t.Fatalf("deploy/mosquitto/mosquitto.conf has no %q line", line)
		}
		c = strings.Replace(c, line, "crlfile "+crlFile+"\n", 1)
	}
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
	return bootPort, devPort, func() {
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
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
	bootPort, devPort, _ := startMosquitto(t, certDir, "")

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
	return tryMQTTWith(addr, rootCA, id, nil)
}

// tryMQTTWith is tryMQTT presenting cert, if not nil, as the client
// certificate.
func tryMQTTWith(addr, rootCA, id string, cert *tls.Certificate) (paho.Client, error) {
	pemBytes, err := os.ReadFile(rootCA)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tls://" + addr).SetClientID(id).
		SetTLSConfig(cfg).
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

// TestMosquittoCRL: mosquitto with the deploy configuration's crlfile
// enabled, fed the crl.pem enrolld writes (pki.EncodeCRLsPEM of
// CA.SignCRLs), refuses a revoked device certificate at connect and
// accepts the others; after an intermediate rotation and a SIGHUP, the
// retired intermediate's list keeps its unrevoked certificates usable and
// its revoked ones refused, and the new intermediate's are judged by its
// own list. (With only the new intermediate's list, OpenSSL finds no CRL
// for the old certificates and refuses all of them.)
func TestMosquittoCRL(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "enrolld")
	certDir := filepath.Join(t.TempDir(), "broker")
	run(t, false, bins.enrolld, "ca", "init", "--data-dir", dataDir)
	run(t, false, bins.enrolld, "broker-cert", "--data-dir", dataDir, "--host", "localhost", "--out", certDir)
	caDir, rootCA := filepath.Join(dataDir, "ca"), filepath.Join(dataDir, "ca", "root_ca.crt")
	crlFile := filepath.Join(dataDir, "crl.pem")
	ca, err := pki.LoadOrCreateCA(caDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA) tls.Certificate {
		t.Helper()
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var id [32]byte
		rand.Read(id[:])
		c, err := ca.IssueDevice(context.Background(), pki.DeviceCertRequest{DeviceID: hex.EncodeToString(id[:]), PublicKey: &key.PublicKey})
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{c.Chain[0].Raw, c.Chain[1].Raw}, PrivateKey: key, Leaf: c.Leaf}
	}
	number := uint64(0)
	publish := func(ca *pki.CA, revoked ...tls.Certificate) {
		t.Helper()
		number++
		now := time.Now()
		req := pki.CRLRequest{Number: number, ThisUpdate: now, NextUpdate: now.Add(time.Hour)}
		for _, c := range revoked {
			req.Revoked = append(req.Revoked, pki.RevokedCertificate{Serial: c.Leaf.SerialNumber, RevokedAt: now})
		}
		crls, err := ca.SignCRLs(req)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, crlFile, string(pki.EncodeCRLsPEM(crls)))
	}
	oldRevoked, oldKept := issue(ca), issue(ca)
	publish(ca, oldRevoked)
	_, devPort, reload := startMosquitto(t, certDir, crlFile)
	addr := "127.0.0.1:" + devPort
	connects := func(c tls.Certificate) bool {
		cl, err := tryMQTTWith(addr, rootCA, "crl-test-"+c.Leaf.Subject.CommonName[:8], &c)
		if err == nil {
			cl.Disconnect(0)
		}
		return err == nil
	}
	if connects(oldRevoked) || !connects(oldKept) {
		t.Fatalf("before the rotation: revoked connects %v, kept connects %v; want false, true", connects(oldRevoked), connects(oldKept))
	}

	if _, err := pki.RotateIntermediate(caDir, nil, nil); err != nil {
		t.Fatal(err)
	}
	rotated, err := pki.LoadOrCreateCA(caDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	newRevoked, newKept := issue(rotated), issue(rotated)
	publish(rotated, oldRevoked, newRevoked)
	reload()
	// The new intermediate's unrevoked certificate connects once the new
	// lists are loaded (before, OpenSSL has no CRL for its issuer).
	deadline := time.Now().Add(10 * time.Second)
	for !connects(newKept) {
		if time.Now().After(deadline) {
			t.Fatal("after SIGHUP, a certificate of the new intermediate is still refused: crl.pem not reloaded")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, c := range []struct {
		name string
		cert tls.Certificate
		want bool
	}{
		{"revoked, old intermediate", oldRevoked, false},
		{"unrevoked, old intermediate", oldKept, true},
		{"revoked, new intermediate", newRevoked, false},
	} {
		if got := connects(c.cert); got != c.want {
			t.Errorf("%s: connects %v, want %v", c.name, got, c.want)
		}
	}
}
