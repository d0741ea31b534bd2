package e2e_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
)

// Fleet operations end to end: the built enrollctl against a running
// enrolld, devices enrolled by the simulator agent.

// ctl runs enrollctl against s with the credential in adminDir ("" for
// the bootstrap admin) and checks its exit code.
func (s *server) ctl(t *testing.T, wantExit int, adminDir string, args ...string) string {
	t.Helper()
	if adminDir == "" {
		adminDir = filepath.Join(s.dataDir, "admin")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.ctl, append(args, "--server", s.url, "--admin-dir", adminDir)...)
	// No config file of the developer's may leak in.
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+t.TempDir(), "ENROLLCTL_SERVER=", "ENROLLCTL_ADMIN_DIR=", "ENROLLCTL_OUTPUT=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("enrollctl %s: %v", strings.Join(args, " "), err)
	}
	if code != wantExit {
		t.Fatalf("enrollctl %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantExit, o.String(), e.String())
	}
	return o.String() + e.String()
}

// ctlJSON runs enrollctl -o json and decodes its output into v.
func (s *server) ctlJSON(t *testing.T, adminDir string, v any, args ...string) {
	t.Helper()
	out := s.ctl(t, 0, adminDir, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("enrollctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (s *server) status(t *testing.T) api.StatusResponse {
	t.Helper()
	var st api.StatusResponse
	s.ctlJSON(t, "", &st, "status")
	return st
}

func (s *server) audit(t *testing.T, args ...string) []api.AuditRecord {
	t.Helper()
	var l api.AuditList
	s.ctlJSON(t, "", &l, append([]string{"audit"}, args...)...)
	return l.Records
}

// countAudit counts records of action on target with outcome.
func countAudit(recs []api.AuditRecord, action, target, outcome string) int {
	n := 0
	for _, r := range recs {
		if r.Action == action && (target == "" || r.Target == target) && (outcome == "" || r.Outcome == outcome) {
			n++
		}
	}
	return n
}

func wantAudit(t *testing.T, recs []api.AuditRecord, action, target, outcome string, want int) {
	t.Helper()
	if got := countAudit(recs, action, target, outcome); got != want {
		var b strings.Builder
		for _, r := range recs {
			fmt.Fprintf(&b, "  %d %s %s %s %s %s %s\n", r.Seq, r.Actor, r.Action, r.Target, r.Outcome, r.Code, r.Message)
		}
		t.Fatalf("audit has %d records %s %s %s, want %d; log:\n%s", got, action, target, outcome, want, b.String())
	}
}

// simTPM is a simulated TPM's state directory and its device ID.
type simTPM struct {
	dir, spec, id string
	ekCertPEM     string // "" without an EK certificate
}

// newSimTPM makes a simulated TPM, with an EK certificate from the CA in
// mfr if mfr is not "".
func newSimTPM(t *testing.T, mfr string) *simTPM {
	t.Helper()
	d := &simTPM{dir: filepath.Join(t.TempDir(), "tpm")}
	d.spec = "simulator:" + d.dir
	args := []string{"identity", "--tpm", d.spec}
	if mfr != "" {
		run(t, false, bins.agentSim, "sim-manufacture", "--state", d.dir, "--manufacturer-ca", mfr)
		pemPath := filepath.Join(t.TempDir(), "ek.pem")
		args = append(args, "--ek-cert-out", pemPath)
		defer func() {
			b, err := os.ReadFile(pemPath)
			if err != nil {
				t.Fatal(err)
			}
			d.ekCertPEM = string(b)
		}()
	}
	out, _ := run(t, false, bins.agentSim, args...)
	d.id = strings.TrimSpace(out)
	if !api.ValidDeviceID(d.id) {
		t.Fatalf("identity printed %q", out)
	}
	return d
}

// enrollArgs are the agent's arguments to enroll d with s.
func (s *server) enrollArgs(d *simTPM, dataDir string, attempts int) []string {
	return []string{"enroll", "--server", s.url, "--root-ca", s.rootCA, "--tpm", d.spec, "--data-dir", dataDir,
		"--event-log", "", "--attempts", fmt.Sprint(attempts), "--timeout", "90s"}
}

func writeTestFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func csvQuote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// TestFleetImport: a file with bad rows is refused as a whole with every
// bad row reported by line; a dry run writes nothing; a good file imports
// once and again as a no-op; --partial applies the good rows; a serial is
// pinned to its EK; an imported device enrolls into its group.
func TestFleetImport(t *testing.T) {
	needBinaries(t)
	s := startServer(t)
	mfr := filepath.Join(t.TempDir(), "mfr")
	withCert, byHash := newSimTPM(t, mfr), newSimTPM(t, "")
	other := strings.Repeat("c", 64)

	bad := writeTestFile(t, "bad.csv", "ek_cert_pem,ek_hash,serial,group,labels\n"+
		csvQuote(withCert.ekCertPEM)+",,SN-1,line-a,site=berlin;batch=7\n"+ // line 2 (the PEM spans lines 2-13 or so)
		","+byHash.id+",SN-2,line-a,\n"+
		",not-a-hash,SN-3,line-a,\n"+
		","+other+",SN-1,line-a,\n"+ // serial of an earlier row
		","+strings.Repeat("d", 64)+",SN-5,bad group,\n"+
		","+strings.Repeat("e", 64)+",SN-6,line-a,nolabel\n")
	lines := strings.Split(readFile(t, bad), "\n")
	lineOf := func(sub string) int {
		for i, l := range lines {
			if strings.Contains(l, sub) {
				return i + 1
			}
		}
		t.Fatalf("no line with %q", sub)
		return 0
	}
	out := s.ctl(t, 5, "", "import", bad)
	for _, want := range []string{
		fmt.Sprintf("bad.csv:%d: bad_request: ek_hash \"not-a-hash\"", lineOf("not-a-hash")),
		fmt.Sprintf("bad.csv:%d: conflict: serial SN-1 is already on line 2", lineOf(other)),
		fmt.Sprintf("bad.csv:%d: bad_request: group \"bad group\"", lineOf("bad group")),
		fmt.Sprintf("bad.csv:%d: bad_request: label \"nolabel\" must be key=value", lineOf("nolabel")),
		"not imported", "4 bad",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("import output lacks %q:\n%s", want, out)
		}
	}
	if st := s.status(t); st.Preregistered != 0 {
		t.Fatalf("a refused import registered %d devices", st.Preregistered)
	}

	// The good rows alone, as JSON lines: a dry run, then for real, then
	// again (a no-op).
	good := writeTestFile(t, "good.jsonl", fmt.Sprintf("%s\n\n%s\n",
		mustMarshal(t, map[string]any{"ek_cert_pem": withCert.ekCertPEM, "serial": "SN-1", "group": "line-a", "labels": map[string]string{"site": "berlin"}}),
		mustMarshal(t, map[string]any{"ek_hash": byHash.id, "serial": "SN-2", "group": "line-a"})))
	var res api.ImportResult
	s.ctlJSON(t, "", &res, "import", good, "--dry-run")
	if !res.DryRun || res.Created != 2 || res.RejectedTotal != 0 {
		t.Fatalf("dry run = %+v", res)
	}
	if st := s.status(t); st.Preregistered != 0 {
		t.Fatalf("a dry run registered %d devices", st.Preregistered)
	}
	s.ctlJSON(t, "", &res, "import", good)
	if !res.Applied || res.Created != 2 || res.Rows != 2 {
		t.Fatalf("import = %+v", res)
	}
	out = s.ctl(t, 0, "", "import", good)
	if !strings.Contains(out, "0 new, 0 changed, 2 unchanged") || !strings.Contains(out, "nothing to do") {
		t.Errorf("re-import is not a no-op:\n%s", out)
	}
	// enrollctl names each import it stages; --abort takes that ID (this
	// one is committed already: not found), and not with a FILE.
	var id string
	if _, err := fmt.Sscanf(out[strings.Index(out, "import "):], "import %s staged", &id); err != nil || len(id) < 16 {
		t.Fatalf("enrollctl did not name the staged import: %v\n%s", err, out)
	}
	s.ctl(t, 6, "", "import", "--abort", id)
	s.ctl(t, 2, "", "import", "--abort", id, good)

	// --partial applies the good rows of the bad file: the two already
	// registered are unchanged, the rest is refused; SN-1 now belongs to
	// withCert, so "other" cannot take it.
	partial := writeTestFile(t, "partial.csv", "ek_hash,serial,group\n"+
		other+",SN-1,line-a\n"+
		strings.Repeat("f", 64)+",SN-7,line-b\n"+
		"xyz,SN-8,line-b\n")
	out = s.ctl(t, 8, "", "import", partial, "--partial")
	for _, want := range []string{
		"partial.csv:2: conflict: serial SN-1 is registered to another TPM (device " + withCert.id,
		"partial.csv:4: bad_request",
		"1 new, 0 changed, 0 unchanged, 2 bad",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("partial import output lacks %q:\n%s", want, out)
		}
	}
	if st := s.status(t); st.Preregistered != 3 {
		t.Fatalf("%d pre-registrations after the partial import, want 3", st.Preregistered)
	}

	// The pre-registered TPM without an EK certificate enrolls into its
	// group with its serial.
	enrolled, _ := run(t, false, bins.agentSim, s.enrollArgs(byHash, t.TempDir(), 1)...)
	if !strings.Contains(enrolled, "enrolled device "+byHash.id) {
		t.Fatalf("agent output:\n%s", enrolled)
	}
	var dev api.DeviceDetail
	s.ctlJSON(t, "", &dev, "devices", "get", byHash.id)
	if dev.Status != api.StatusEnrolled || dev.Serial != "SN-2" || dev.Group != "line-a" || dev.Admission != "preregistered" || len(dev.Certificates) != 1 {
		t.Fatalf("device = %+v", dev)
	}

	recs := s.audit(t)
	wantAudit(t, recs, "import.commit", "", "refused", 1)
	wantAudit(t, recs, "import.commit", "", "success", 3) // real, no-op, partial: not the dry run
	wantAudit(t, recs, "device.serial_conflict", "SN-1", "refused", 1)
	wantAudit(t, recs, "certificate.issue", byHash.id, "success", 1)
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bgAgent runs the agent in the background.
type bgAgent struct {
	done chan struct{}
	out  bytes.Buffer
	err  error
}

func startBgAgent(t *testing.T, args ...string) *bgAgent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	a := &bgAgent{done: make(chan struct{})}
	cmd := exec.CommandContext(ctx, bins.agentSim, args...)
	cmd.Stdout, cmd.Stderr = &a.out, &a.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.err = cmd.Wait()
		cancel()
		close(a.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-a.done
	})
	return a
}

func (a *bgAgent) wait(t *testing.T) (string, error) {
	t.Helper()
	select {
	case <-a.done:
		return a.out.String(), a.err
	case <-time.After(2 * time.Minute):
		t.Fatal("agent did not finish")
		return "", nil
	}
}

// waitPending polls until device id is pending.
func (s *server) waitPending(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var l api.DeviceList
		s.ctlJSON(t, "", &l, "devices", "list", "--status", "pending")
		for _, d := range l.Devices {
			if d.DeviceID == id {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("device %s never became pending", id)
}

// TestFleetApproval: a device of a manual group waits as pending (the
// agent retries, honouring Retry-After) and completes on its own once an
// operator approves it; a denied device is refused. In closed mode a
// stranger leaves no record.
func TestFleetApproval(t *testing.T) {
	needBinaries(t)
	s := startServer(t, "--pending-retry-after", "1s")
	s.ctl(t, 0, "", "groups", "set", "line-m", "--admission", "manual", "--cert-lifetime", "2h")
	approved, denied, stranger := newSimTPM(t, ""), newSimTPM(t, ""), newSimTPM(t, "")
	batch := writeTestFile(t, "batch.csv", "ek_hash,serial,group,labels\n"+
		approved.id+",SN-A,line-m,batch=1\n"+denied.id+",SN-D,line-m,batch=1\n")
	s.ctl(t, 0, "", "import", batch)

	// Closed mode: the stranger is refused and leaves no record.
	_, stderr := run(t, true, bins.agentSim, s.enrollArgs(stranger, t.TempDir(), 1)...)
	if !strings.Contains(stderr, string(api.CodeNotRegistered)) {
		t.Fatalf("stranger: %s", stderr)
	}

	a := startBgAgent(t, s.enrollArgs(approved, t.TempDir(), 60)...)
	s.waitPending(t, approved.id)
	out := s.ctl(t, 0, "", "devices", "approve", approved.id)
	if !strings.Contains(out, "changed") {
		t.Errorf("approve output:\n%s", out)
	}
	if out, err := a.wait(t); err != nil || !strings.Contains(out, "enrolled device "+approved.id) {
		t.Fatalf("approved agent: %v\n%s", err, out)
	}
	var dev api.DeviceDetail
	s.ctlJSON(t, "", &dev, "devices", "get", approved.id)
	if dev.Status != api.StatusEnrolled || dev.StatusChangedBy != "admin/admin" {
		t.Fatalf("approved device = %+v", dev)
	}
	if life := dev.CertNotAfter.Sub(dev.LastEnrolledAt); life > 2*time.Hour+time.Minute || life < time.Hour {
		t.Errorf("certificate lives %s, want the group's 2h", life)
	}
	// Approving again changes nothing.
	s.ctl(t, 0, "", "devices", "approve", approved.id)

	b := startBgAgent(t, s.enrollArgs(denied, t.TempDir(), 60)...)
	s.waitPending(t, denied.id)
	s.ctl(t, 0, "", "devices", "deny", "--label", "batch=1", "--reason", "not ours")
	if out, err := b.wait(t); err == nil || !strings.Contains(out, string(api.CodeDenied)) {
		t.Fatalf("denied agent: %v\n%s", err, out)
	}
	// A denied device comes back only through readmit.
	s.ctl(t, 7, "", "devices", "approve", denied.id)

	devs := s.devices(t)
	if len(devs) != 2 {
		t.Fatalf("devices = %+v, want the approved and the denied one (no stranger)", devs)
	}
	recs := s.audit(t)
	wantAudit(t, recs, "device.pending", approved.id, "success", 1)
	wantAudit(t, recs, "device.pending", denied.id, "success", 1)
	wantAudit(t, recs, "device.approve", approved.id, "success", 2) // changed, then already approved
	wantAudit(t, recs, "device.deny", denied.id, "success", 1)
	wantAudit(t, recs, "device.approve", denied.id, "refused", 1)
	wantAudit(t, recs, "certificate.issue", approved.id, "success", 1)
	wantAudit(t, recs, "group.set", "group/line-m", "success", 1)
	if n := countAudit(recs, "device.pending", stranger.id, ""); n != 0 {
		t.Errorf("the stranger left %d audit records", n)
	}
}

// TestFleetRevokeAndConfig: a new config version reaches the device at its
// next enrollment; a revoked device's renewal and whoami are refused and
// its serial is on the CRL, until it is re-admitted.
func TestFleetRevokeAndConfig(t *testing.T) {
	needBinaries(t)
	mfr := filepath.Join(t.TempDir(), "mfr")
	d := newSimTPM(t, mfr)
	s := startServer(t, "--manufacturer-roots", filepath.Join(mfr, "manufacturer_ca.crt"), "--bundle-version", "3")
	dataDir := t.TempDir()
	run(t, false, bins.agentSim, s.enrollArgs(d, dataDir, 1)...)

	// Config: a group template, then a device override, then a rollback.
	tmpl := writeTestFile(t, "default.json", `{"mqtt":{"client_id":"${device_id}","topic":"fleet/${group}"}}`)
	var cv api.ConfigVersion
	s.ctlJSON(t, "", &cv, "config", "set", "--group", "default", tmpl, "--comment", "mqtt")
	if cv.Version != 4 {
		t.Fatalf("first stored version %d, want 4 (above the default bundle's 3)", cv.Version)
	}
	out, _ := run(t, false, bins.agentSim, s.enrollArgs(d, dataDir, 1)...)
	if !strings.Contains(out, "bundle version 4") {
		t.Fatalf("re-enrolled agent did not get version 4:\n%s", out)
	}
	var got map[string]map[string]string
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(dataDir, "config.json"))), &got); err != nil {
		t.Fatal(err)
	}
	if got["mqtt"]["client_id"] != d.id || got["mqtt"]["topic"] != "fleet/default" {
		t.Errorf("rendered config = %v", got)
	}
	override := writeTestFile(t, "dev.json", `{"debug":true}`)
	s.ctlJSON(t, "", &cv, "config", "set", "--device", d.id, override)
	if cv.Version != 5 {
		t.Fatalf("device version %d, want 5", cv.Version)
	}
	s.ctlJSON(t, "", &cv, "config", "set", "--group", "default", writeTestFile(t, "v6.json", `{"x":1}`))
	s.ctlJSON(t, "", &cv, "config", "rollback", "--group", "default", "--to", "4")
	if cv.Version != 7 || cv.RolledBackFrom != 4 || !strings.Contains(string(cv.Config), "${device_id}") {
		t.Fatalf("rollback = %+v", cv)
	}
	var hist api.ConfigHistory
	s.ctlJSON(t, "", &hist, "config", "history", "--group", "default")
	if len(hist.Versions) != 3 || hist.Versions[0].Version != 7 || hist.Versions[2].Version != 4 {
		t.Fatalf("history = %+v", hist)
	}
	// The history names each version's content by its digest: rollback
	// copies version 4's content into 7.
	if v := hist.Versions; v[0].Config != nil || len(v[0].ConfigSHA256) != 64 || v[0].ConfigSHA256 != v[2].ConfigSHA256 || v[0].ConfigSHA256 == v[1].ConfigSHA256 {
		t.Errorf("history digests %q %q %q (configs %s): want 7 = 4 != 6, no content", v[0].ConfigSHA256, v[1].ConfigSHA256, v[2].ConfigSHA256, v[0].Config)
	}
	out, _ = run(t, false, bins.agentSim, s.enrollArgs(d, dataDir, 1)...)
	if !strings.Contains(out, "bundle version 5") { // the device override wins
		t.Fatalf("agent did not get the device's version 5:\n%s", out)
	}
	s.ctl(t, 6, "", "config", "rollback", "--group", "default", "--to", "99")

	// Revoke.
	var certs api.CertificateList
	s.ctlJSON(t, "", &certs, "certs", "list", "--device", d.id)
	if len(certs.Certificates) != 3 {
		t.Fatalf("certificates = %+v, want 3 enrollments", certs)
	}
	s.ctl(t, 2, "", "devices", "revoke", d.id) // --reason is required
	var resp api.DeviceActionResponse
	s.ctlJSON(t, "", &resp, "devices", "revoke", d.id, "--reason", "stolen", "--reason-code", "key-compromise")
	if len(resp.Results) != 1 || len(resp.Results[0].RevokedCertificates) != 3 {
		t.Fatalf("revoke = %+v", resp)
	}
	_, stderr := run(t, true, bins.agentSim, s.enrollArgs(d, dataDir, 3)...)
	if !strings.Contains(stderr, string(api.CodeRevoked)) {
		t.Errorf("re-enrollment of a revoked device: %s", stderr)
	}
	who, stderr := run(t, true, bins.agentSim, "whoami", "--server", s.url, "--root-ca", s.rootCA, "--tpm", d.spec, "--data-dir", dataDir, "--event-log", "")
	if !strings.Contains(who+stderr, string(api.CodeRevoked)) {
		t.Errorf("whoami of a revoked device: %s%s", who, stderr)
	}
	var crl struct {
		Revoked []struct {
			Serial     string `json:"serial"`
			ReasonCode int    `json:"reason_code"`
		} `json:"revoked"`
	}
	s.ctlJSON(t, "", &crl, "crl")
	onCRL := map[string]bool{}
	for _, e := range crl.Revoked {
		onCRL[e.Serial] = e.ReasonCode == 1
	}
	for _, c := range certs.Certificates {
		if !onCRL[c.Serial] {
			t.Errorf("certificate %s is not on the CRL with reason key-compromise: %+v", c.Serial, crl)
		}
	}
	// The same list, unauthenticated, at the documented URL and as a file.
	der := httpGet(t, s, nil, api.PathCRL, http.StatusOK)
	list, err := x509.ParseRevocationList(der)
	if err != nil || len(list.RevokedCertificateEntries) != 3 {
		t.Fatalf("GET %s: %v, %+v", api.PathCRL, err, list)
	}
	file, err := x509.ParseRevocationList([]byte(readFile(t, filepath.Join(s.dataDir, "crl.der"))))
	if err != nil || len(file.RevokedCertificateEntries) != 3 {
		t.Fatalf("crl.der: %v", err)
	}
	// Every issuer's list, PEM (one issuer: no rotation here).
	for what, data := range map[string][]byte{api.PathCRLPEM: httpGet(t, s, nil, api.PathCRLPEM, http.StatusOK), "crl.pem": []byte(readFile(t, filepath.Join(s.dataDir, "crl.pem")))} {
		block, rest := pem.Decode(data)
		if block == nil || block.Type != "X509 CRL" || len(bytes.TrimSpace(rest)) != 0 {
			t.Fatalf("%s: want one PEM CRL, got %q", what, data)
		}
		if l, err := x509.ParseRevocationList(block.Bytes); err != nil || l.Number.Cmp(list.Number) < 0 || len(l.RevokedCertificateEntries) != 3 {
			t.Errorf("%s: %v, %+v", what, err, l)
		}
	}
	s.ctl(t, 0, "", "devices", "revoke", d.id, "--reason", "again") // unchanged

	// Re-admission is explicit; then the device enrolls again.
	s.ctl(t, 0, "", "devices", "readmit", d.id, "--reason", "recovered")
	run(t, false, bins.agentSim, s.enrollArgs(d, dataDir, 1)...)

	recs := s.audit(t)
	wantAudit(t, recs, "device.revoke", d.id, "success", 2)
	wantAudit(t, recs, "device.readmit", d.id, "success", 1)
	wantAudit(t, recs, "device.begin", d.id, "refused", 1)
	wantAudit(t, recs, "config.set", "", "success", 3)
	wantAudit(t, recs, "config.rollback", "group/default", "success", 1)
	wantAudit(t, recs, "config.rollback", "group/default", "refused", 1)
	wantAudit(t, recs, "certificate.issue", d.id, "success", 1)
	wantAudit(t, recs, "certificate.renew", d.id, "success", 3)
	if ms := metrics(t, s); !strings.Contains(ms, `edgeenroll_renewals_total{outcome="success"} 3`) || !strings.Contains(ms, `edgeenroll_renewals_total{outcome="refused"} 1`) {
		t.Errorf("renewal metrics:\n%s", grep(ms, "renewals"))
	}
}

func metrics(t *testing.T, s *server) string {
	return string(httpGet(t, s, nil, api.PathMetrics, http.StatusOK))
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// httpGet fetches path from s with cert (nil: none) and checks the status.
func httpGet(t *testing.T, s *server, cert *tls.Certificate, path string, want int) []byte {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(readFile(t, s.rootCA)))
	cfg := &tls.Config{RootCAs: roots}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 30 * time.Second}
	resp, err := c.Get(s.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("GET %s: HTTP %d, want %d: %s", path, resp.StatusCode, want, b)
	}
	return b
}

// TestFleetAuthorization: each role can do what it is for and nothing
// more; every refusal is audited, and the audit log survives a restart
// with each action in it exactly once.
func TestFleetAuthorization(t *testing.T) {
	needBinaries(t)
	dataDir := filepath.Join(t.TempDir(), "enrolld")
	s := startServerIn(t, dataDir)
	creds := map[string]string{}
	for _, role := range []string{"viewer", "factory", "operator"} {
		dir := filepath.Join(t.TempDir(), role)
		out := s.ctl(t, 0, "", "operators", "issue", "--role", role, "--name", "bob-"+role, "--out", dir)
		if !strings.Contains(out, "issued "+role+"/bob-"+role) {
			t.Fatalf("operators issue: %s", out)
		}
		if fi, err := os.Stat(filepath.Join(dir, "operator.key")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("operator.key: %v, %v", fi, err)
		}
		creds[role] = dir
	}
	id := strings.Repeat("a", 64)
	batch := writeTestFile(t, "b.csv", "ek_hash,serial\n"+id+",SN-Z\n")

	// Viewer: reads, writes nothing.
	var st api.StatusResponse
	s.ctlJSON(t, creds["viewer"], &st, "status")
	if st.Operator != "viewer/bob-viewer" {
		t.Fatalf("status as viewer = %+v", st)
	}
	s.ctl(t, 0, creds["viewer"], "devices", "list")
	s.ctl(t, 4, creds["viewer"], "import", batch)
	s.ctl(t, 4, creds["viewer"], "devices", "approve", id)
	s.ctl(t, 4, creds["viewer"], "operators", "issue", "--role", "admin", "--name", "mallory", "--out", filepath.Join(t.TempDir(), "m"))
	// Factory: imports, cannot approve or set config.
	s.ctl(t, 0, creds["factory"], "import", batch)
	s.ctl(t, 4, creds["factory"], "devices", "approve", id)
	s.ctl(t, 4, creds["factory"], "config", "set", "--group", "g", writeTestFile(t, "c.json", `{"a":1}`))
	// Operator: sets groups, cannot import or issue credentials.
	s.ctl(t, 0, creds["operator"], "groups", "set", "line-x", "--admission", "deny")
	s.ctl(t, 4, creds["operator"], "import", batch)
	s.ctl(t, 4, creds["operator"], "operators", "issue", "--role", "viewer", "--name", "eve", "--out", filepath.Join(t.TempDir(), "e"))
	// No client certificate at all.
	httpGet(t, s, nil, api.PathAdminDevices, http.StatusUnauthorized)
	// A missing credential is an authorisation failure too.
	s.ctl(t, 4, filepath.Join(t.TempDir(), "nothing"), "status")

	check := func(recs []api.AuditRecord) {
		t.Helper()
		wantAudit(t, recs, "operator.issue", "", "success", 3)
		wantAudit(t, recs, "import.commit", "", "success", 1)
		wantAudit(t, recs, "group.set", "group/line-x", "success", 1)
		refusals := map[string]string{ // action → actor
			"import.start":   "viewer/bob-viewer",
			"device.approve": "viewer/bob-viewer",
			"operator.issue": "viewer/bob-viewer",
			"config.set":     "factory/bob-factory",
		}
		for action, actor := range refusals {
			n := 0
			for _, r := range recs {
				if r.Action == action && r.Outcome == "refused" && r.Code == api.CodeForbidden && r.Actor.String() == actor {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d forbidden %s by %s, want 1", n, action, actor)
			}
		}
		wantAudit(t, recs, "device.approve", "", "refused", 2) // viewer, factory
		wantAudit(t, recs, "import.start", "", "refused", 2)   // viewer, operator
		wantAudit(t, recs, "operator.issue", "", "refused", 2) // viewer, operator
		wantAudit(t, recs, "devices.list", "", "refused", 1)   // anonymous
		for _, r := range recs {
			if r.Action == "devices.list" && (r.Actor.Kind != "anonymous" || r.Code != api.CodeUnauthenticated) {
				t.Errorf("anonymous refusal recorded as %+v", r)
			}
		}
	}
	before := s.audit(t)
	check(before)

	// Restart on the same data dir: the log is the same, and grows on.
	s.stop()
	s = startServerIn(t, dataDir)
	after := s.audit(t)
	if len(after) != len(before) {
		t.Fatalf("%d audit records after restart, %d before", len(after), len(before))
	}
	for i := range before {
		if after[i].Seq != before[i].Seq || after[i].Action != before[i].Action || !after[i].Time.Equal(before[i].Time) {
			t.Fatalf("record %d changed across the restart: %+v vs %+v", i, before[i], after[i])
		}
	}
	check(after)
	s.ctl(t, 4, creds["viewer"], "devices", "revoke", id, "--reason", "x")
	last := s.audit(t, "--action", "device.revoke")
	if len(last) != 1 || last[0].Seq != before[len(before)-1].Seq+1 {
		t.Fatalf("first record after restart = %+v, want seq %d", last, before[len(before)-1].Seq+1)
	}
}

// TestCRLAfterRotation: after `enrolld ca rotate-intermediate` and a
// restart, the server publishes a list per issuer, and enrollctl, whose
// operator credential still chains through the retired intermediate,
// fetches and verifies the list of its own issuer.
func TestCRLAfterRotation(t *testing.T) {
	s := startServer(t)
	s.stop()
	run(t, false, bins.enrolld, "ca", "rotate-intermediate", "--data-dir", s.dataDir)
	s = startServerIn(t, s.dataDir)

	var crl struct {
		Issuer string `json:"issuer"`
		Number string `json:"number"`
	}
	s.ctlJSON(t, "", &crl, "crl")
	if crl.Number == "" {
		t.Fatalf("enrollctl crl: %+v", crl)
	}
	var lists int
	for rest := httpGet(t, s, nil, api.PathCRLPEM, http.StatusOK); ; lists++ {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
	}
	if lists != 2 {
		t.Errorf("GET %s: %d lists; want the new and the retired intermediate's", api.PathCRLPEM, lists)
	}
	s.stop() // the log is complete, and read by no one else, once enrolld stopped
	if strings.Contains(s.log.String(), "retired intermediate") {
		t.Errorf("enrolld warned about the retired intermediate, whose key is archived:\n%s", s.log)
	}
}
