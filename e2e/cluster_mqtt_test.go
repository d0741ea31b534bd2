package e2e_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/enrollserver/store/etcdstore/etcdtest"
)

// TestClusterExternalBroker runs two enrolld on one etcd cluster with one
// mosquitto: the broker knows enrolld by one client identity, so exactly
// one server, elected through etcd, holds the connection. Killed, it is
// replaced by the other within the election's lease, and devices enroll
// over MQTT before and after.
func TestClusterExternalBroker(t *testing.T) {
	tpms, mfrRoot := manufacture(t, 2)
	etcd := etcdtest.StartCluster(t, 3)
	work := t.TempDir()
	dirA, dirB := filepath.Join(work, "a"), filepath.Join(work, "b")
	run(t, false, bins.enrolld, "ca", "init", "--data-dir", dirA)
	if out, err := exec.Command("cp", "-a", dirA, dirB).CombinedOutput(); err != nil {
		t.Fatalf("copying the CA: %v\n%s", err, out)
	}
	certDir := filepath.Join(work, "broker")
	run(t, false, bins.enrolld, "broker-cert", "--data-dir", dirA, "--host", "localhost", "--out", certDir)
	bootPort, devPort, _ := startMosquitto(t, certDir, "")

	args := []string{"--store", etcd.StoreURL("mqtt"), "--manufacturer-roots", mfrRoot, "--mqtt-broker", "mqtts://localhost:" + devPort}
	servers := make([]*enrolld, 2)
	for i, dir := range []string{dirA, dirB} {
		servers[i] = &enrolld{t: t, dataDir: dir, listen: freeAddr(t), log: &syncBuffer{}, args: args}
		servers[i].start()
		t.Cleanup(func() {
			servers[i].stop()
			if t.Failed() {
				t.Logf("enrolld %d log:\n%s", i, servers[i].log)
			}
		})
	}
	const holds = "this enrolld holds the connection"
	holder := func(not *enrolld) *enrolld {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			var found []*enrolld
			for _, s := range servers {
				if s != not && strings.Contains(s.log.String(), holds) {
					found = append(found, s)
				}
			}
			if len(found) > 1 {
				t.Fatal("both servers hold the broker connection")
			}
			if len(found) == 1 {
				return found[0]
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("no server took the broker connection")
		return nil
	}
	enroll := func(tpm string) {
		t.Helper()
		out, _ := run(t, false, bins.agentSim, "enroll", "--server", "mqtts://localhost:"+bootPort,
			"--mqtt-device-server", "mqtts://localhost:"+devPort, "--root-ca", servers[0].rootCA(),
			"--tpm", "simulator:"+tpm, "--data-dir", t.TempDir(), "--event-log", "", "--attempts", "5", "--timeout", "90s")
		if !strings.Contains(out, "enrolled device ") {
			t.Fatalf("agent did not enroll over MQTT:\n%s", out)
		}
	}

	first := holder(nil)
	enroll(tpms[0])
	// The other server keeps out while the first holds the role.
	for _, s := range servers {
		if s != first && strings.Contains(s.log.String(), holds) {
			t.Fatal("the standby server connected to the broker too")
		}
	}
	first.kill9()
	second := holder(first)
	enroll(tpms[1])

	var list struct {
		Devices []struct {
			DeviceID string `json:"device_id"`
			Status   string `json:"status"`
		} `json:"devices"`
	}
	srv := &server{url: second.url(), dataDir: second.dataDir}
	srv.ctlJSON(t, "", &list, "devices", "list")
	if len(list.Devices) != 2 {
		t.Errorf("%d devices listed after the takeover, want 2: %+v", len(list.Devices), list.Devices)
	}
}
