package e2e_test

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestMQTTAgent enrolls the production agent through enrolld's embedded
// MQTT broker (the TPM in a swtpm process), renews, and makes the whoami
// call over MQTT with the TPM-backed certificate.
func TestMQTTAgent(t *testing.T) {
	needBinaries(t)
	tpm := startSwtpm(t)
	mqttAddr := freeAddr(t)
	args := []string{"--mqtt-listen", mqttAddr}
	for _, r := range tpm.roots {
		args = append(args, "--manufacturer-roots", r)
	}
	srv := newEnrolld(t, args...)
	_, port, _ := net.SplitHostPort(mqttAddr)
	url := "mqtts://localhost:" + port
	dataDir := t.TempDir()
	enroll := func() string {
		out, _ := run(t, false, bins.agent, "enroll", "--server", url, "--root-ca", srv.rootCA(), "--tpm", tpm.spec,
			"--data-dir", dataDir, "--event-log", "", "--attempts", "1", "--timeout", "60s")
		return out
	}
	out := enroll()
	checkEnrolled(t, out, dataDir)
	if !strings.Contains(out, url) {
		t.Errorf("agent output does not name the MQTT server:\n%s", out)
	}
	// Second run: a renewal under the device identity (mTLS to the broker).
	out = enroll()
	checkEnrolled(t, out, dataDir)
	who, _ := run(t, false, bins.agent, "whoami", "--server", url, "--root-ca", srv.rootCA(), "--tpm", tpm.spec,
		"--data-dir", dataDir, "--event-log", "", "--timeout", "30s")
	if !strings.Contains(who, `"device_id"`) {
		t.Errorf("whoami over MQTT: %s", who)
	}
}

// TestMQTTBrokerRestartedMidEnrollment kills enrolld, and with it the
// embedded broker, while agents enroll over MQTT, and restarts it: the
// agents reconnect and converge (sessions whose sealing keys died with the
// process are begun again).
func TestMQTTBrokerRestartedMidEnrollment(t *testing.T) {
	const n = 10
	tpms, root := manufacture(t, n)
	mqttAddr := freeAddr(t)
	srv := newEnrolld(t, "--manufacturer-roots", root, "--mqtt-listen", mqttAddr)
	_, port, _ := net.SplitHostPort(mqttAddr)
	url := "mqtts://localhost:" + port
	agents := make([]*agent, n)
	for i := range agents {
		agents[i] = startAgent(t, url, srv.rootCA(), tpms[i], t.TempDir())
	}
	deadline := time.Now().Add(60 * time.Second)
	for strings.Count(srv.log.String(), `"msg":"device enrolled"`) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	srv.kill9()
	time.Sleep(300 * time.Millisecond)
	srv.start()
	for _, a := range agents {
		a.waitReady(t, 90*time.Second)
		a.stop()
	}
	srv.checkStore(n)
}
