package e2e_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/loadgen"
)

// Boot storm sizes. The CI-sized storm runs here; the bench-sized one is
//
//	enroll-bench manufacturer --dir mfr
//	enrolld serve --data-dir d --manufacturer-roots mfr/manufacturer_ca.crt &
//	enroll-bench run --server https://localhost:8443 --root-ca d/ca/root_ca.crt \
//	  --manufacturer-ca mfr --identities ids.gob -n 10000 -c 10000 --ramp 10s \
//	  --attempts 100 --timeout 15m
//
// (the identities are made once, before timing, and kept in ids.gob).
const (
	stormDevices = 1000
	stormRamp    = 10 * time.Second
	// stormMaxRSS is a generous cap on the server's resident memory: the
	// admission queue bounds the requests held at once, so memory must
	// not grow with the number of devices knocking.
	stormMaxRSS = 512 << 20
)

// TestBootStorm: stormDevices devices with real TPM evidence start within
// stormRamp against one enrolld. The server sheds what it cannot take with
// 429 and a Retry-After; every device reaches ready, the server holds one
// record per device, and its RSS stays under stormMaxRSS. It logs the time
// until all are ready, time-to-ready percentiles, retries and peak RSS.
func TestBootStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("boot storm: not in -short")
	}
	bench := needBench(t)
	work := t.TempDir()
	mfr := filepath.Join(work, "manufacturer")
	root, _ := run(t, false, bench, "manufacturer", "--dir", mfr)
	s := startServer(t, "--manufacturer-roots", strings.TrimSpace(root))

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bench, "run", "--server", s.url, "--root-ca", s.rootCA, "--manufacturer-ca", mfr,
		"-n", strconv.Itoa(stormDevices), "-c", strconv.Itoa(stormDevices), "--ramp", stormRamp.String(),
		"--workers", "2", "--attempts", "100", "--timeout", "3m", "--no-verify", "-o", "json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("enroll-bench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	total := time.Since(start)
	var rep loadgen.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("enroll-bench -o json: %v\n%s", err, stdout.String())
	}
	if len(rep.Phases) != 1 {
		t.Fatalf("%d phases, want one", len(rep.Phases))
	}
	p := rep.Phases[0]
	t.Logf("identities: %d made in %.1fs; storm of %d devices over %s: all done in %.1fs (whole run %s)",
		rep.Identities.Created, rep.Identities.Seconds, stormDevices, stormRamp, p.Seconds, total.Round(time.Second))
	t.Logf("time to ready (ms): p50 %.0f, p95 %.0f, p99 %.0f, max %.0f; start delay p99 %.0f ms",
		p.TimeToReady.P50, p.TimeToReady.P95, p.TimeToReady.P99, p.TimeToReady.Max, p.StartDelay.P99)
	t.Logf("retries: %d total, %d devices retried, max %d; errors %v; %.1f enrollments/s",
		p.Retries.Total, p.Retries.DevicesRetried, p.Retries.Max, p.Errors, p.PerSecond)
	if p.Server != nil {
		t.Logf("server: max RSS %.1f MiB, peak RSS %.1f MiB, %.2f CPU ms/enrollment",
			float64(p.Server.RSSMaxBytes)/(1<<20), float64(p.Server.PeakRSSBytes)/(1<<20), p.Server.CPUMsPerOp)
	}

	if p.Succeeded != stormDevices || p.Failed != 0 {
		t.Errorf("%d of %d devices ready, %d failed, errors %v\nstderr:\n%s", p.Succeeded, stormDevices, p.Failed, p.Errors, stderr.String())
	}
	if p.StartDelay.P99 > float64(2*time.Second/time.Millisecond) {
		t.Errorf("devices started up to %.0f ms late: not a storm within %s", p.StartDelay.P99, stormRamp)
	}
	if p.Server == nil || p.Server.RSSMaxBytes == 0 {
		t.Errorf("no server memory figures: %+v", p.Server)
	} else if rss := max(p.Server.RSSMaxBytes, p.Server.PeakRSSBytes); rss > stormMaxRSS {
		t.Errorf("server RSS reached %d MiB, cap %d MiB", rss>>20, stormMaxRSS>>20)
	}
	for code := range p.Errors {
		if code != "busy" {
			t.Errorf("devices saw errors other than busy: %v", p.Errors)
			break
		}
	}

	// What the server shed, and why.
	if shed := admissionMetrics(t, s); shed != "" {
		t.Logf("server admission metrics:\n%s", shed)
	}

	// One record per device: no duplicates, none missing.
	devs := s.devices(t)
	ids := map[string]bool{}
	for _, d := range devs {
		if ids[d.DeviceID] {
			t.Errorf("device %s listed twice", d.DeviceID)
		}
		ids[d.DeviceID] = true
		if d.Enrollments != 1 {
			t.Errorf("device %s: %d enrollments, want 1", d.DeviceID, d.Enrollments)
		}
	}
	if len(ids) != stormDevices {
		t.Errorf("server lists %d devices, want %d", len(ids), stormDevices)
	}
	if t.Failed() {
		os.Stderr.WriteString(stderr.String())
	}
}

// admissionMetrics returns the server's edgeenroll_admission_ counters and
// gauges (not the histogram buckets) from /metrics.
func admissionMetrics(t *testing.T, s *server) string {
	t.Helper()
	pem, err := os.ReadFile(s.rootCA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := c.Get(s.url + "/metrics")
	if err != nil {
		t.Logf("reading /metrics: %v", err)
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "edgeenroll_admission_") && !strings.Contains(line, "_bucket{") {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return strings.Join(out, "\n")
}
