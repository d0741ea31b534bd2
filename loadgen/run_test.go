package loadgen_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/enrollservertest"
	"github.com/edgeenroll/edgeenroll/enrollserver/httpapi"
	"github.com/edgeenroll/edgeenroll/loadgen"
	"github.com/edgeenroll/edgeenroll/tpmsim"
)

// workerEnv makes the test binary a pool worker (see TestMain).
const workerEnv = "LOADGEN_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		if err := loadgen.ServeWorkerStdio(); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func workerCommand() *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), workerEnv+"=1")
	return cmd
}

// TestPool: worker processes make identities and answer for any device;
// when one dies, the others carry on.
func TestPool(t *testing.T) {
	openProver(t, 1, nil).Close() // skips without cgo
	// The manufacturer exists before the workers load it.
	mfrDir := t.TempDir()
	if _, err := tpmsim.LoadOrCreateManufacturer(mfrDir); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pool, err := loadgen.StartPool(ctx, loadgen.PoolConfig{Workers: 2, Seed: 99, ManufacturerDir: mfrDir, Command: workerCommand, Stderr: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if pids := pool.PIDs(); len(pids) != 2 || pids[0] == pids[1] {
		t.Fatalf("PIDs = %v, want two workers", pids)
	}
	ids, err := loadgen.CreateIdentities(ctx, pool, []byte("pool test"), 0, 6, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := x509.ParseCertificate(id.EKCertificate); err != nil {
			t.Fatal(err)
		}
	}
	answerAll := func() {
		t.Helper()
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				br, secret := challenge(t, id)
				a, err := pool.Answer(ctx, id, br)
				if err != nil {
					t.Errorf("device %d: %v", id.Index, err)
					return
				}
				if a.TPM <= 0 || string(a.Secret) != string(secret) {
					t.Errorf("device %d: TPM time %v, secret recovered %v", id.Index, a.TPM, string(a.Secret) == string(secret))
				}
				verifyAnswer(t, id, br, secret, a.Finish)
			}()
		}
		wg.Wait()
	}
	answerAll()

	// A device's TPM key signs through the pool (a renewal's TLS
	// handshake), verifiably for the key it certified.
	digest := sha256.Sum256([]byte("tls 1.3 certificate verify"))
	sig, err := pool.Sign(ctx, ids[0], digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	keyPub, err := tpm2.DecodePublic(ids[0].Key.Public)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := keyPub.Key()
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], sig) {
		t.Error("the pool's signature does not verify with the device's TPM key")
	}

	// One worker dies: the other serves every device.
	p, err := os.FindProcess(pool.PIDs()[0])
	if err != nil {
		t.Fatal(err)
	}
	// Requests in flight to it, or sent before the pool notices, go to
	// the other worker.
	p.Kill()
	answerAll()
}

// testServer is an in-process enrolld core behind real TLS on loopback.
type testServer struct {
	url   string
	roots *x509.CertPool
	// mtls counts connections on which a device presented a certificate
	// that verified.
	mtls atomic.Int64
	// rootPEM is the enrollment root, for loadgen's RootCAFile.
	rootPEM []byte
}

func startServer(t *testing.T, mfr *tpmsim.Manufacturer) *testServer {
	t.Helper()
	c := enrollservertest.New(t, enrollserver.Config{ManufacturerRoots: poolOf(mfr)}, nil)
	srv, ca := c.Server, c.CA
	cert, err := ca.IssueServer([]string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(httpapi.NewHandler(srv, httpapi.Options{}))
	s := &testServer{roots: ca.RootPool()}
	ts.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.RootPool(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) > 0 {
				s.mtls.Add(1)
			}
			return nil
		}}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	s.url = ts.URL
	s.rootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root().Raw})
	return s
}

// flaky fails each device's first begin with a transient error.
type flaky struct {
	device.Transport
	once sync.Once
}

func (f *flaky) Begin(ctx context.Context, corr string, req *api.BeginRequest) (*api.BeginResponse, error) {
	failed := false
	f.once.Do(func() { failed = true })
	if failed {
		return nil, &device.TransientError{Err: errors.New("connection reset (test)")}
	}
	return f.Transport.Begin(ctx, corr, req)
}

// TestRun drives devices through enrollment and renewal against a real
// server core over TLS, with one in-process simulator.
func TestRun(t *testing.T) {
	mfr, err := tpmsim.NewManufacturer("run test manufacturer")
	if err != nil {
		t.Fatal(err)
	}
	p := openProver(t, 5, mfr)
	defer p.Close()
	prover := &loadgen.LocalProver{P: p}
	const n = 8
	ids, err := loadgen.CreateIdentities(context.Background(), prover, []byte("run test"), 0, n, 2)
	if err != nil {
		t.Fatal(err)
	}

	run := func(t *testing.T, s *testServer, renew bool, wrap func(device.Transport) device.Transport) *loadgen.Report {
		t.Helper()
		certs := loadgen.NewCertificates(prover)
		rep, err := loadgen.Run(context.Background(), loadgen.Config{
			Identities: ids, Prover: prover, TransportName: "https", Certificates: certs,
			Transport: func(id *loadgen.Identity) (device.Transport, error) {
				tr := device.NewHTTPSTransport(s.url, s.roots, certs.For(id))
				if wrap != nil {
					tr = wrap(tr)
				}
				return tr, nil
			},
			Roots: s.roots, Verify: true, Concurrency: 3, Renew: renew,
			Retry:        loadgen.RetryPolicy{Attempts: 3, Base: time.Millisecond, Max: 5 * time.Millisecond},
			PhaseTimeout: time.Minute, ServerPID: os.Getpid(),
		})
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}

	t.Run("enroll and renew", func(t *testing.T) {
		s := startServer(t, mfr)
		rep := run(t, s, true, nil)
		// Renewals present the certificate the enrollment issued, signed
		// in the TPM, as an agent does; enrollments present none.
		if got := s.mtls.Load(); got != n {
			t.Errorf("%d connections presented a device certificate, want one per renewal (%d)", got, n)
		}
		if len(rep.Phases) != 2 || rep.Phases[0].Name != loadgen.PhaseEnroll || rep.Phases[1].Name != loadgen.PhaseRenew {
			t.Fatalf("phases %+v", rep.Phases)
		}
		for _, ph := range rep.Phases {
			if ph.Succeeded != n || ph.Failed != 0 || len(ph.Errors) != 0 || ph.Retries.Total != 0 {
				t.Errorf("%s: %d succeeded, %d failed, errors %v, retries %+v", ph.Name, ph.Succeeded, ph.Failed, ph.Errors, ph.Retries)
			}
			for name, s := range map[string]loadgen.Summary{"begin": ph.Begin, "finish": ph.Finish, "tpm": ph.TPM, "enrollment": ph.Enrollment, "time to ready": ph.TimeToReady} {
				if s.Count != n || s.P50 <= 0 || s.P50 > s.P95 || s.P95 > s.P99 || s.P99 > s.Max {
					t.Errorf("%s %s: %+v", ph.Name, name, s)
				}
			}
			if ph.Server == nil || ph.Server.CPUSeconds < 0 || ph.Server.PeakRSSBytes == 0 {
				t.Errorf("%s: server figures %+v", ph.Name, ph.Server)
			}
		}
		if rep.EnrollmentsPerSecond <= 0 || rep.RenewalsPerSecond <= 0 {
			t.Errorf("rates %v, %v", rep.EnrollmentsPerSecond, rep.RenewalsPerSecond)
		}
		// The report survives JSON, as ceiling --run reads it.
		b, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		var back loadgen.Report
		if err := json.Unmarshal(b, &back); err != nil || back.Phases[1].Succeeded != n {
			t.Fatalf("JSON round trip: %v", err)
		}
		var text strings.Builder
		rep.WriteText(&text)
		if !strings.Contains(text.String(), "per renewal") {
			t.Errorf("text report:\n%s", text.String())
		}
	})

	t.Run("refused by code", func(t *testing.T) {
		other, err := tpmsim.NewManufacturer("another TPM vendor")
		if err != nil {
			t.Fatal(err)
		}
		rep := run(t, startServer(t, other), false, nil)
		ph := rep.Phases[0]
		if ph.Succeeded != 0 || ph.Failed != n || ph.Errors[string(api.CodeEKUntrusted)] != n || ph.Retries.Total != 0 {
			t.Errorf("untrusted devices: %d succeeded, errors %v, retries %+v; want all refused once with %s",
				ph.Succeeded, ph.Errors, ph.Retries, api.CodeEKUntrusted)
		}
	})

	t.Run("retries", func(t *testing.T) {
		rep := run(t, startServer(t, mfr), false, func(tr device.Transport) device.Transport { return &flaky{Transport: tr} })
		ph := rep.Phases[0]
		if ph.Succeeded != n || ph.Errors[loadgen.CodeNetwork] != n || ph.Retries.Total != n || ph.Retries.Histogram[1] != n {
			t.Errorf("flaky begins: %d succeeded, errors %v, retries %+v; want one retry each", ph.Succeeded, ph.Errors, ph.Retries)
		}
	})
}
