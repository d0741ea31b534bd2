package e2e_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// swtpm is a software TPM in its own process, reached over TCP: the same
// code path in the agent as a hardware TPM, only the channel differs.
type swtpm struct {
	spec  string   // --tpm value for the agent
	roots []string // its EK certificate CA, for --manufacturer-roots
}

// startSwtpm manufactures a TPM with swtpm_setup (EK and EK certificate
// from a local CA in the test's own directory) and serves it on loopback.
func startSwtpm(t *testing.T) *swtpm {
	t.Helper()
	for _, bin := range []string{"swtpm", "swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed: run scripts/deps.sh (apt-get install swtpm swtpm-tools)", bin)
		}
	}
	dir := t.TempDir()
	state, ca := filepath.Join(dir, "state"), filepath.Join(dir, "ca")
	for _, d := range []string{state, ca} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	localca := filepath.Join(dir, "swtpm-localca.conf")
	writeFile(t, localca, fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca))
	options := filepath.Join(dir, "swtpm-localca.options")
	writeFile(t, options, "--platform-manufacturer edgeenroll\n--platform-version 1.0\n--platform-model e2e\n")
	setup := filepath.Join(dir, "swtpm_setup.conf")
	writeFile(t, setup, fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", localca, options))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpmstate", state, "--createek", "--create-ek-cert",
		"--lock-nvram", "--overwrite", "--config", setup).CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}

	port := freePortPair(t)
	sctx, scancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(sctx, "swtpm", "socket", "--tpm2", "--tpmstate", "dir="+state,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
		"--flags", "not-need-init,startup-clear")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		scancel()
		cmd.Wait()
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm did not listen on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &swtpm{
		spec:  "swtpm:" + addr,
		roots: []string{filepath.Join(ca, "swtpm-localca-rootca-cert.pem"), filepath.Join(ca, "issuercert.pem")},
	}
}

// freePortPair finds two consecutive free loopback ports (data, control).
func freePortPair(t *testing.T) int {
	t.Helper()
	for range 50 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
		l1.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no free pair of loopback ports")
	return 0
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSwtpmAgent enrolls the production (cgo-free, simulator-less) agent
// with a TPM in a separate swtpm process whose EK certificate comes from
// swtpm's own local CA.
func TestSwtpmAgent(t *testing.T) {
	needBinaries(t)
	tpm := startSwtpm(t)
	args := []string{}
	for _, r := range tpm.roots {
		args = append(args, "--manufacturer-roots", r)
	}
	s := startServer(t, args...)
	dataDir := t.TempDir()
	out, _ := s.enroll(t, bins.agent, tpm.spec, dataDir, false)
	checkEnrolled(t, out, dataDir)
	devs := s.devices(t)
	if len(devs) != 1 || devs[0].Admission != "ek_certificate" {
		t.Fatalf("devices = %+v, want one device admitted by its swtpm EK certificate", devs)
	}
	// A restarted agent keeps its identity (TPM-wrapped blobs in its cache).
	s.enroll(t, bins.agent, tpm.spec, dataDir, false)
	if devs := s.devices(t); len(devs) != 1 || devs[0].Enrollments != 2 {
		t.Fatalf("after re-enrollment devices = %+v", devs)
	}
	// A separate process reuses the cached certificate with the same TPM
	// key, reloaded from its wrapped blob.
	who, _ := run(t, false, bins.agent, "whoami", "--server", s.url, "--root-ca", s.rootCA, "--tpm", tpm.spec, "--data-dir", dataDir, "--event-log", "")
	if !strings.Contains(who, devs[0].DeviceID) {
		t.Errorf("whoami = %s, want device %s", who, devs[0].DeviceID)
	}
}
