package e2e_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/enrollserver/store/etcdstore/etcdtest"
	"github.com/edgeenroll/edgeenroll/loadgen"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// cluster is several enrolld sharing one etcd store and one CA.
type cluster struct {
	servers []*server
	mqtt    []string // each server's embedded broker, mqtts://localhost:PORT
	roots   *x509.CertPool
	mfr     *tpmsim.Manufacturer
	etcd    *etcdtest.Cluster
}

// startCluster runs a 3-member etcd cluster in the test process and n
// enrolld processes on it. The CA is made once (enrolld ca init) and
// copied to every server's data directory, as README's "Scaling out" says.
func startCluster(t *testing.T, n int, args ...string) *cluster {
	t.Helper()
	needBinaries(t)
	c := &cluster{etcd: etcdtest.StartCluster(t, 3)}
	work := t.TempDir()
	mfr, err := tpmsim.NewManufacturer("cluster test vendor")
	if err != nil {
		t.Fatal(err)
	}
	c.mfr = mfr
	mfrFile := filepath.Join(work, "manufacturer.pem")
	if err := os.WriteFile(mfrFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mfr.Certificate.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(work, "enrolld-0")
	run(t, false, bins.enrolld, "ca", "init", "--data-dir", first)
	storeURL := c.etcd.StoreURL("e2e")
	for i := range n {
		dir := filepath.Join(work, fmt.Sprintf("enrolld-%d", i))
		if i > 0 {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("cp", "-a", filepath.Join(first, "ca"), filepath.Join(dir, "ca")).CombinedOutput(); err != nil {
				t.Fatalf("copying the CA: %v\n%s", err, out)
			}
		}
		mqttAddr := freeAddr(t)
		_, port, _ := net.SplitHostPort(mqttAddr)
		c.mqtt = append(c.mqtt, "mqtts://localhost:"+port)
		c.servers = append(c.servers, startServerIn(t, dir, append([]string{"--store", storeURL, "--manufacturer-roots", mfrFile, "--mqtt-listen", mqttAddr}, args...)...))
	}
	pemRoot, err := os.ReadFile(c.servers[0].rootCA)
	if err != nil {
		t.Fatal(err)
	}
	c.roots = x509.NewCertPool()
	c.roots.AppendCertsFromPEM(pemRoot)
	return c
}

func (c *cluster) transport(i int) device.Transport {
	return device.NewHTTPSTransport(c.servers[i].url, c.roots, nil)
}

// splitTransport begins on one server and finishes on another.
type splitTransport struct{ begin, finish device.Transport }

func (s splitTransport) Begin(ctx context.Context, corr string, req *api.BeginRequest) (*api.BeginResponse, error) {
	return s.begin.Begin(ctx, corr, req)
}

func (s splitTransport) Finish(ctx context.Context, corr string, req *api.FinishRequest, key device.SealKeyFunc) (*api.FinishResponse, error) {
	return s.finish.Finish(ctx, corr, req, key)
}

func (s splitTransport) Whoami(ctx context.Context, corr string) (*api.WhoamiResponse, error) {
	return s.begin.Whoami(ctx, corr)
}

func (s splitTransport) Close() error { return errors.Join(s.begin.Close(), s.finish.Close()) }

// identities makes n device identities on the process's simulator.
func identities(t *testing.T, mfr *tpmsim.Manufacturer, n int) (*loadgen.LocalProver, []*loadgen.Identity) {
	t.Helper()
	p, err := loadgen.OpenProver(1, mfr)
	if err != nil {
		t.Fatalf("the TPM simulator is required (cgo, gcc, libssl-dev): %v", err)
	}
	t.Cleanup(func() { p.Close() })
	lp := &loadgen.LocalProver{P: p}
	fleet := make([]byte, 16)
	rand.Read(fleet)
	ids, err := loadgen.CreateIdentities(t.Context(), lp, fleet, 0, n, 1)
	if err != nil {
		t.Fatal(err)
	}
	return lp, ids
}

func leafOf(t *testing.T, fr *api.FinishResponse) *x509.Certificate {
	t.Helper()
	if len(fr.CertificateChain) == 0 {
		t.Fatal("finish answered no certificate")
	}
	leaf, err := x509.ParseCertificate(fr.CertificateChain[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func (c *cluster) certs(t *testing.T, i int, deviceID string) []api.CertificateInfo {
	t.Helper()
	var list api.CertificateList
	c.servers[i].ctlJSON(t, "", &list, "certs", "list", "--device", deviceID)
	return list.Certificates
}

// TestCluster runs three enrolld on one 3-member etcd cluster: any server
// takes any step of any enrollment, a nonce raced on two servers is
// accepted once, an approval on one server lets a device waiting on
// another in, the audit log stays one ordered log, and an etcd member
// killed under load loses no acknowledged enrollment.
func TestCluster(t *testing.T) {
	c := startCluster(t, 3)
	ctx := t.Context()
	// The simulator is one per process: the pushed-to agent's TPM state
	// is made before the prover holds it.
	pushTPM := filepath.Join(t.TempDir(), "tpm")
	if _, err := tpmsim.ManufactureState(pushTPM, c.mfr); err != nil {
		t.Fatalf("the TPM simulator is required (cgo, gcc, libssl-dev): %v", err)
	}
	lp, ids := identities(t, c.mfr, 40)

	t.Run("BeginOnAFinishOnB", func(t *testing.T) {
		id := ids[0]
		tr := splitTransport{c.transport(0), c.transport(1)}
		defer tr.Close()
		br, err := tr.Begin(ctx, "split-1", id.BeginRequest())
		if err != nil {
			t.Fatalf("begin on A: %v", err)
		}
		a, err := lp.Answer(ctx, id, br)
		if err != nil {
			t.Fatal(err)
		}
		fr, err := tr.Finish(ctx, "split-2", a.Finish, nil)
		if err != nil {
			t.Fatalf("finish on B: %v", err)
		}
		if leaf := leafOf(t, fr); leaf.Subject.CommonName != id.DeviceID {
			t.Errorf("certificate for %q, want %s", leaf.Subject.CommonName, id.DeviceID)
		}
		// The third server sees the device and its one certificate.
		var dev api.DeviceDetail
		c.servers[2].ctlJSON(t, "", &dev, "devices", "get", id.DeviceID)
		if dev.Status != api.StatusEnrolled {
			t.Errorf("server C: device status %q, want enrolled", dev.Status)
		}
		if got := c.certs(t, 2, id.DeviceID); len(got) != 1 {
			t.Errorf("server C lists %d certificates, want 1", len(got))
		}
	})

	t.Run("NonceRacedOnTwoServers", func(t *testing.T) {
		// Two different answers to one challenge (two quotes over the
		// same nonce) race on B and C: exactly one is accepted.
		for round, id := range ids[1:11] {
			trA := c.transport(0)
			br, err := trA.Begin(ctx, "race", id.BeginRequest())
			trA.Close()
			if err != nil {
				t.Fatal(err)
			}
			a1, err := lp.Answer(ctx, id, br)
			if err != nil {
				t.Fatal(err)
			}
			a2, err := lp.Answer(ctx, id, br)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for i, a := range []*loadgen.Answer{a1, a2} {
				wg.Go(func() {
					tr := c.transport(1 + i)
					defer tr.Close()
					_, errs[i] = tr.Finish(ctx, "race", a.Finish, nil)
				})
			}
			wg.Wait()
			ok := 0
			for _, err := range errs {
				if err == nil {
					ok++
				} else if !errors.Is(err, &api.Error{Code: api.CodeNonceUnknownOrUsed}) {
					t.Errorf("round %d: the losing finish failed with %v, want %s", round, err, api.CodeNonceUnknownOrUsed)
				}
			}
			if ok != 1 {
				t.Fatalf("round %d: %d finishes accepted, want exactly 1 (errors %v)", round, ok, errs)
			}
			if got := c.certs(t, 0, id.DeviceID); len(got) != 1 {
				t.Fatalf("round %d: %d certificates recorded, want 1", round, len(got))
			}
		}
	})

	t.Run("ApprovalOnASeenByB", func(t *testing.T) {
		c.servers[0].ctl(t, 0, "", "groups", "set", "default", "--admission", "manual")
		defer c.servers[0].ctl(t, 0, "", "groups", "set", "default", "--admission", "auto")
		id := ids[11]
		trB := c.transport(1)
		defer trB.Close()
		_, err := trB.Begin(ctx, "wait-1", id.BeginRequest())
		if !errors.Is(err, &api.Error{Code: api.CodePendingApproval}) {
			t.Fatalf("begin on B in a manual group: %v, want %s", err, api.CodePendingApproval)
		}
		c.servers[0].ctl(t, 0, "", "devices", "approve", id.DeviceID)
		br, err := trB.Begin(ctx, "wait-2", id.BeginRequest())
		if err != nil {
			t.Fatalf("begin on B after approval on A: %v", err)
		}
		a, err := lp.Answer(ctx, id, br)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := trB.Finish(ctx, "wait-3", a.Finish, nil); err != nil {
			t.Fatalf("finish on B: %v", err)
		}
	})

	t.Run("ConfigPushThroughAnotherServer", func(t *testing.T) {
		// A device kept connected to B's broker hears of a config an
		// operator stores through A: B follows the store's watch.
		tpmDir := pushTPM
		dataDir := t.TempDir()
		a := startAgent(t, c.mqtt[1], c.servers[1].rootCA, tpmDir, dataDir)
		id := a.waitReady(t, time.Minute).DeviceID
		// The agent connects to B's broker as the device shortly after it
		// is ready; a version stored before that is not pushed (clean
		// sessions: it would come with the next renewal). So store
		// versions through A until one arrives.
		deadline := time.Now().Add(30 * time.Second)
		for i := 1; ; i++ {
			want := fmt.Sprintf("through A, version %d", i)
			c.servers[0].ctl(t, 0, "", "config", "set", "--device", id, writeTestFile(t, fmt.Sprintf("pushed%d.json", i), `{"pushed":"`+want+`"}`))
			for wait := time.Now().Add(2 * time.Second); time.Now().Before(wait); time.Sleep(50 * time.Millisecond) {
				if b, _ := os.ReadFile(filepath.Join(dataDir, "config.json")); strings.Contains(string(b), "through A") {
					a.stop()
					return
				}
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(filepath.Join(dataDir, "config.json"))
				t.Fatalf("the device connected to B never received a config stored through A; config.json:\n%s\nagent log:\n%s", b, a.stderr.String())
			}
		}
	})

	t.Run("MemberKilledMidLoad", func(t *testing.T) {
		load := ids[12:]
		servers := len(c.servers)
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(500 * time.Millisecond)
			c.etcd.Stop(0)
		}()
		rep, err := loadgen.Run(ctx, loadgen.Config{
			Identities: load, Prover: lp, Concurrency: 6, RequestTimeout: 20 * time.Second, PhaseTimeout: 3 * time.Minute,
			Transport: func(id *loadgen.Identity) (device.Transport, error) {
				return splitTransport{c.transport(id.Index % servers), c.transport((id.Index + 1) % servers)}, nil
			},
			TransportName: "https", Roots: c.roots, Verify: true,
		})
		<-done
		if err != nil {
			t.Fatal(err)
		}
		ph := rep.Phases[0]
		if ph.Succeeded != len(load) {
			t.Fatalf("%d of %d devices enrolled with an etcd member killed (errors %v)", ph.Succeeded, len(load), ph.Errors)
		}
		// Every acknowledged enrollment is recorded, seen through another
		// server.
		for _, id := range load {
			if got := c.certs(t, 2, id.DeviceID); len(got) == 0 {
				t.Errorf("device %s enrolled but no certificate is recorded", id.DeviceID)
			}
		}
	})

	t.Run("OneOrderedAuditLog", func(t *testing.T) {
		var log api.AuditList
		c.servers[1].ctlJSON(t, "", &log, "audit")
		if len(log.Records) < len(ids) {
			t.Fatalf("%d audit records, want at least %d", len(log.Records), len(ids))
		}
		// Enrollments through three servers and admin calls through two
		// are one log: sequence numbers 1, 2, 3… with no gap or repeat.
		for i, r := range log.Records {
			if r.Seq != uint64(i+1) {
				t.Fatalf("audit record %d has seq %d, want %d: not one ordered log", i, r.Seq, i+1)
			}
		}
	})
}
