package enrollserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/store"
	"github.com/edgeenroll/edgeenroll/firmware"
	elt "github.com/edgeenroll/edgeenroll/firmware/eventlogtest"
	"github.com/edgeenroll/edgeenroll/pki"
)

// Measured boot on the real simulated TPM: a test "powers on" the shared
// simulator with a generated firmware event log (reset, then extend the
// log's digests into the PCRs, as firmware does), the device quotes the
// PCRs the server asks for, and sends a log: the one it booted, or a forged
// one.

// bootFirmware resets the simulated TPM and measures l into its PCRs.
func bootFirmware(t testing.TB, l *elt.Log) {
	t.Helper()
	if sim == nil {
		t.Fatalf("the TPM simulator is required: %v", simErr)
	}
	if err := sim.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := l.ExtendTPM(sim); err != nil {
		t.Fatal(err)
	}
}

// firmwareDigest is the digest the server computes for a boot of l.
func firmwareDigest(t testing.TB, l *elt.Log) string {
	t.Helper()
	lg, err := firmware.ParseMeasurements(l.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	m, err := lg.Replay(l.PCRs(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return m.FirmwareDigest()
}

var (
	goodFirmware   = &elt.Options{FirmwareVersion: "Acme Gateway 1.4.2"}
	newerFirmware  = &elt.Options{FirmwareVersion: "Acme Gateway 1.5.0"}
	unapprovedFW   = &elt.Options{FirmwareVersion: "Acme Gateway 0.9 (unsigned build)"}
	secureBootOff  = &elt.Options{FirmwareVersion: "Acme Gateway 1.4.2", SecureBootDisabled: true}
	withBothBanks  = &elt.Options{FirmwareVersion: "Acme Gateway 1.4.2", SHA1: true}
	realisticBoot  = func() *elt.Options { o := elt.Realistic(); o.FirmwareVersion = "Acme Gateway 1.4.2"; return o }()
	defaultGroupMB = "default"
)

// enforce makes the default group enforce measured boot with secure boot,
// approving the firmware of each log.
func (e *env) enforce(t *testing.T, spec api.GroupSpec, approve ...*elt.Log) {
	t.Helper()
	ctx := context.Background()
	spec.Admission, spec.MeasuredBoot = api.AdmissionAuto, api.MeasuredBootEnforce
	if _, err := e.srv.SetGroup(ctx, opCall, defaultGroupMB, &spec); err != nil {
		t.Fatal(err)
	}
	if len(approve) == 0 {
		return
	}
	req := &api.FirmwareAddRequest{Group: defaultGroupMB}
	for i, l := range approve {
		req.References = append(req.References, api.FirmwareDigest{Digest: firmwareDigest(t, l), Name: fmt.Sprintf("approved %d", i)})
	}
	if _, err := e.srv.AddFirmware(ctx, opCall, req); err != nil {
		t.Fatal(err)
	}
}

// finishWithLog begins, answers with the TPM as booted, and sends log.
func (e *env) finishWithLog(d *device, log []byte) (*api.BeginResponse, error) {
	br := e.begin(d)
	req := d.finish(br, br.Nonce)
	req.EventLog = log
	var fr api.FinishResponse
	return br, e.post(api.PathFinish, req, &fr)
}

func (e *env) device(t *testing.T, d *device) *store.Device {
	t.Helper()
	rec, err := e.store.Device(context.Background(), deviceID(d.ekDER))
	if err != nil {
		t.Fatalf("device record: %v", err)
	}
	return rec
}

// TestMeasuredBootRefusals forges, swaps or withholds one part of the
// measured-boot evidence per case and expects its stable code; the device
// record shows the measurement and the reason.
func TestMeasuredBootRefusals(t *testing.T) {
	good := elt.New(goodFirmware)
	for _, tc := range []struct {
		name string
		// boot is what the firmware measured into the TPM.
		boot *elt.Options
		// send makes the log the device sends from the booted one.
		send func(booted *elt.Log) []byte
		// answer, if set, replaces the honest finish.
		answer     func(d *device, br *api.BeginResponse, booted *elt.Log) *api.FinishRequest
		spec       api.GroupSpec
		code       api.Code
		wantDigest string // "" means: the log did not replay
		detail     string
	}{
		{
			name: "approved firmware", boot: goodFirmware,
			send: func(l *elt.Log) []byte { return l.Bytes() },
		},
		{
			name: "realistic shim and GRUB boot (PCRs 8, 9, 14 quoted by default)", boot: realisticBoot,
			send: func(l *elt.Log) []byte { return l.Bytes() },
		},
		{
			name: "no event log", boot: goodFirmware,
			send: func(*elt.Log) []byte { return nil },
			code: api.CodeEventLogMismatch, detail: "sent no TCG event log",
		},
		{
			name: "malformed event log", boot: goodFirmware,
			send: func(*elt.Log) []byte { return []byte("this is not a TCG event log") },
			code: api.CodeEventLogMismatch, detail: "malformed",
		},
		{
			name: "log edited after the quote: secure boot switched on in the log", boot: secureBootOff,
			spec: api.GroupSpec{RequireSecureBoot: true},
			send: func(l *elt.Log) []byte {
				// The edited event is self-consistent (its digest is of
				// its data): only replay against the quote catches it.
				on := elt.New(goodFirmware)
				i := l.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG)
				l.Events[i] = on.Events[on.Index(7, elt.EV_EFI_VARIABLE_DRIVER_CONFIG)]
				return l.Bytes()
			},
			code: api.CodeEventLogMismatch, detail: "does not replay",
		},
		{
			name: "log with an event removed", boot: goodFirmware,
			send: func(l *elt.Log) []byte {
				i := slices.IndexFunc(l.Events, func(e elt.Event) bool {
					return e.PCR == 4 && e.Type == elt.EV_EFI_BOOT_SERVICES_APPLICATION && bytes.Contains(e.Data, []byte("v\x00m\x00l\x00i\x00n\x00u\x00z"))
				})
				l.Events = slices.Delete(l.Events, i, i+1)
				return l.Bytes()
			},
			code: api.CodeEventLogMismatch, detail: "does not replay",
		},
		{
			name: "log with an event added after the quote", boot: goodFirmware,
			send: func(l *elt.Log) []byte {
				l.Events = append(l.Events, elt.NewMeasurement(4, elt.EV_EFI_BOOT_SERVICES_APPLICATION, nil, []byte("late image")))
				return l.Bytes()
			},
			code: api.CodeEventLogMismatch, detail: "does not replay",
		},
		{
			name: "log from another device (approved firmware) while this TPM booted other firmware", boot: unapprovedFW,
			send: func(*elt.Log) []byte { return good.Bytes() },
			code: api.CodeEventLogMismatch, detail: "does not replay",
		},
		{
			name: "legacy SHA-1 log against the SHA-256 bank", boot: withBothBanks,
			send: func(l *elt.Log) []byte { return l.LegacyBytes() },
			code: api.CodeEventLogMismatch, detail: "SHA-1",
		},
		{
			name: "PCRs quoted over the SHA-1 bank", boot: withBothBanks,
			send: func(l *elt.Log) []byte { return l.Bytes() },
			answer: func(d *device, br *api.BeginResponse, l *elt.Log) *api.FinishRequest {
				req := d.finish(br, br.Nonce)
				ak := d.loadAK(d.akBlob)
				defer ak.Close(d.tpm)
				q, err := ak.QuotePCRs(d.tpm, br.Nonce, goattest.HashSHA1, br.PCRs)
				if err != nil {
					d.t.Fatal(err)
				}
				req.Quote = api.Quote{Quote: q.Quote, Signature: q.Signature}
				req.EventLog = l.Bytes()
				return req
			},
			code: api.CodeQuoteInvalid, wantDigest: "-",
		},
		{
			name: "log measures a PCR the quote left out", boot: goodFirmware,
			send: func(l *elt.Log) []byte { return l.Bytes() },
			answer: func(d *device, br *api.BeginResponse, l *elt.Log) *api.FinishRequest {
				// The firmware measured into PCR 16 too: the log says so,
				// but the server did not ask for PCR 16.
				extra := &elt.Log{Events: []elt.Event{elt.NewEvent(16, elt.EV_EFI_ACTION, []byte("debug"))}}
				if err := extra.ExtendTPM(sim); err != nil {
					d.t.Fatal(err)
				}
				l.Events = append(l.Events, extra.Events...)
				req := d.finish(br, br.Nonce)
				req.EventLog = l.Bytes()
				return req
			},
			code: api.CodePCRNotQuoted, detail: "[16]",
		},
		{
			name: "secure boot off when required", boot: secureBootOff,
			spec: api.GroupSpec{RequireSecureBoot: true},
			send: func(l *elt.Log) []byte { return l.Bytes() },
			code: api.CodeSecureBootDisabled, wantDigest: firmwareDigest(t, elt.New(secureBootOff)), detail: "turn UEFI secure boot on",
		},
		{
			name: "secure boot off, not required", boot: secureBootOff,
			send: func(l *elt.Log) []byte { return l.Bytes() },
		},
		{
			name: "unapproved firmware", boot: unapprovedFW,
			send: func(l *elt.Log) []byte { return l.Bytes() },
			code: api.CodeFirmwareNotApproved, wantDigest: firmwareDigest(t, elt.New(unapprovedFW)), detail: "enrollctl firmware add --group default --from-device",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.enforce(t, tc.spec, good, elt.New(realisticBoot))
			d := newDevice(t, e.mfr)
			booted := elt.New(tc.boot)
			bootFirmware(t, booted)
			br := e.begin(d)
			var req *api.FinishRequest
			if tc.answer != nil {
				req = tc.answer(d, br, booted)
			} else {
				req = d.finish(br, br.Nonce)
				req.EventLog = tc.send(booted)
			}
			var fr api.FinishResponse
			err := e.post(api.PathFinish, req, &fr)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("finish: %v", err)
				}
				rec := e.device(t, d)
				if fw := rec.Firmware; fw == nil || fw.Verdict != api.FirmwareApproved || fw.Digest != firmwareDigest(t, booted) || fw.Reference == "" {
					t.Errorf("recorded firmware = %+v, want approved %s", fw, firmwareDigest(t, booted))
				}
				return
			}
			wantCode(t, err, tc.code)
			if ae := err.(*api.Error); !strings.Contains(ae.Message, tc.detail) {
				t.Errorf("message %q lacks %q", ae.Message, tc.detail)
			}
			if tc.wantDigest == "-" {
				return // refused before measured boot: nothing measured
			}
			rec := e.device(t, d)
			fw := rec.Firmware
			if fw == nil || fw.Verdict != api.FirmwareRefused || fw.Code != string(tc.code) || fw.Digest != tc.wantDigest || fw.Reason == "" {
				t.Fatalf("recorded firmware = %+v, want refused %s with digest %q", fw, tc.code, tc.wantDigest)
			}
			if rec.Status != store.StatusRefused || rec.CertSerial != "" {
				t.Errorf("first refused enrollment left status %s, certificate %q; want refused, none", rec.Status, rec.CertSerial)
			}
			if n := len(e.audit("device.firmware", deviceID(d.ekDER))); n != 1 {
				t.Errorf("%d device.firmware audit records, want 1", n)
			}
		})
	}
}

// TestMeasuredBootRenewal: a device with approved firmware enrolls and
// renews; after a firmware update its renewal is refused with
// firmware_not_approved (its certificate stays valid and its record shows
// the new digest); once an operator approves the new firmware from the
// device, it renews again. Retiring the firmware refuses it again.
func TestMeasuredBootRenewal(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	good, newer := elt.New(goodFirmware), elt.New(newerFirmware)
	e.enforce(t, api.GroupSpec{RequireSecureBoot: true}, good)
	d := newDevice(t, e.mfr)
	id := deviceID(d.ekDER)

	bootFirmware(t, good)
	if _, err := e.finishWithLog(d, good.Bytes()); err != nil {
		t.Fatalf("enrollment: %v", err)
	}
	if _, err := e.finishWithLog(d, good.Bytes()); err != nil {
		t.Fatalf("renewal: %v", err)
	}
	before := e.device(t, d)
	if before.Renewals != 1 || before.Firmware.Verdict != api.FirmwareApproved || !before.Firmware.Renewal {
		t.Fatalf("after renewal: %d renewals, firmware %+v", before.Renewals, before.Firmware)
	}

	// A firmware update, then a reboot.
	bootFirmware(t, newer)
	br, err := e.finishWithLog(d, newer.Bytes())
	if !br.ExpiresAt.After(e.clock()) {
		t.Fatal("session already expired")
	}
	wantCode(t, err, api.CodeFirmwareNotApproved)
	after := e.device(t, d)
	if after.Status != store.StatusEnrolled || after.CertSerial != before.CertSerial || !after.CertNotAfter.Equal(before.CertNotAfter) {
		t.Errorf("refused renewal changed the record: status %s, cert %s (was %s)", after.Status, after.CertSerial, before.CertSerial)
	}
	if fw := after.Firmware; fw.Digest != firmwareDigest(t, newer) || fw.Code != string(api.CodeFirmwareNotApproved) || !fw.Renewal || fw.Version != newerFirmware.FirmwareVersion {
		t.Errorf("recorded firmware = %+v, want the new digest refused at renewal", fw)
	}
	// The admin API shows it.
	detail, err := e.srv.GetDevice(ctx, id)
	if err != nil || detail.Firmware == nil || detail.Firmware.Code != api.CodeFirmwareNotApproved || detail.Firmware.Digest != firmwareDigest(t, newer) {
		t.Fatalf("GetDevice firmware = %+v, %v", detail.Firmware, err)
	}

	// The operator learns the new firmware from the device.
	resp, err := e.srv.AddFirmware(ctx, opCall, &api.FirmwareAddRequest{Group: defaultGroupMB, FromDevice: id})
	if err != nil || resp.Added != 1 || resp.References[0].Digest != firmwareDigest(t, newer) || !strings.Contains(resp.References[0].Name, "1.5.0") {
		t.Fatalf("firmware add --from-device = %+v, %v", resp, err)
	}
	if _, err := e.finishWithLog(d, newer.Bytes()); err != nil {
		t.Fatalf("renewal after approval: %v", err)
	}
	if rec := e.device(t, d); rec.Renewals != 2 || rec.Firmware.Verdict != api.FirmwareApproved || rec.Firmware.Reference != resp.References[0].Name {
		t.Errorf("after approval: %d renewals, firmware %+v", rec.Renewals, rec.Firmware)
	}

	// Retired: refused again at once.
	if _, err := e.srv.RetireFirmware(ctx, opCall, &api.FirmwareRetireRequest{Group: defaultGroupMB, Digests: []string{firmwareDigest(t, newer)}, Reason: "recalled"}); err != nil {
		t.Fatal(err)
	}
	_, err = e.finishWithLog(d, newer.Bytes())
	wantCode(t, err, api.CodeFirmwareNotApproved)

	// The issue records carry the firmware; the refusals are audited.
	if recs := e.audit("certificate.renew", id); len(recs) != 2 || !strings.Contains(string(recs[1].After), firmwareDigest(t, newer)) {
		t.Errorf("renewal audit = %d records, last %s", len(recs), recs[len(recs)-1].After)
	}
	if n := len(e.audit("device.firmware", id)); n != 2 {
		t.Errorf("%d device.firmware refusals audited, want 2", n)
	}
}

// TestMeasuredBootGoldenDevice: in a group that enforces measured boot and
// approves nothing yet, the first device is refused but leaves a refused
// record with its firmware, which the operator approves from it.
func TestMeasuredBootGoldenDevice(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.enforce(t, api.GroupSpec{})
	d := newDevice(t, e.mfr)
	id := deviceID(d.ekDER)
	good := elt.New(realisticBoot)
	bootFirmware(t, good)
	_, err := e.finishWithLog(d, good.Bytes())
	wantCode(t, err, api.CodeFirmwareNotApproved)
	l, err := e.srv.ListDevices(ctx, enrollserver.DeviceQuery{Status: api.StatusRefused})
	if err != nil || len(l.Devices) != 1 || l.Devices[0].Firmware == nil || l.Devices[0].Firmware.Digest != firmwareDigest(t, good) {
		t.Fatalf("refused devices = %+v, %v", l, err)
	}
	// A viewer may look but not approve.
	if _, err := e.srv.ListFirmware(ctx, enrollserver.FirmwareQuery{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.srv.AddFirmware(ctx, opCall, &api.FirmwareAddRequest{Group: defaultGroupMB, FromDevice: id, Name: "golden"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.finishWithLog(d, good.Bytes()); err != nil {
		t.Fatalf("enrollment after approval: %v", err)
	}
	rec := e.device(t, d)
	if rec.Status != store.StatusEnrolled || rec.Firmware.Reference != "golden" || rec.Enrollments != 1 {
		t.Errorf("record = status %s, %d enrollments, firmware %+v", rec.Status, rec.Enrollments, rec.Firmware)
	}
	groups, err := e.srv.GetGroup(ctx, defaultGroupMB)
	if err != nil || groups.FirmwareReferences != 1 || groups.MeasuredBoot != api.MeasuredBootEnforce {
		t.Errorf("group = %+v, %v", groups, err)
	}
}

// TestMeasuredBootOff: a group that does not enforce admits any boot, and
// still records what enforcement would say.
func TestMeasuredBootOff(t *testing.T) {
	e := newEnv(t, func(c *enrollserver.Config) { c.PCRs = []int{7, 6, 5, 4, 3, 2, 1, 0, 8, 9, 14, 7} })
	d := newDevice(t, e.mfr)
	l := elt.New(unapprovedFW)
	bootFirmware(t, l)
	br, err := e.finishWithLog(d, l.Bytes())
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	if want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14}; !slices.Equal(br.PCRs, want) {
		t.Errorf("quoted PCRs %v, want %v", br.PCRs, want)
	}
	fw := e.device(t, d).Firmware
	if fw == nil || fw.Verdict != api.FirmwareNotEnforced || fw.Code != string(api.CodeFirmwareNotApproved) || fw.Digest != firmwareDigest(t, l) {
		t.Errorf("recorded firmware = %+v, want not_enforced firmware_not_approved", fw)
	}
	// Without a log: enrolled, the last measurement kept.
	if _, err := e.finishWithLog(d, nil); err != nil {
		t.Fatalf("finish without a log: %v", err)
	}
	if got := e.device(t, d).Firmware; got == nil || got.Digest != fw.Digest {
		t.Errorf("firmware after a finish without log = %+v", got)
	}
}

// TestMeasuredBootRequiredPCRs: a group's required PCRs join the quote and
// must be accounted for by the log.
func TestMeasuredBootRequiredPCRs(t *testing.T) {
	e := newEnv(t)
	good := elt.New(goodFirmware)
	e.enforce(t, api.GroupSpec{RequiredPCRs: []int{23, 16}}, good)
	d := newDevice(t, e.mfr)
	bootFirmware(t, good)
	br, err := e.finishWithLog(d, good.Bytes())
	if err != nil {
		t.Fatalf("finish: %v", err)
	}
	if !slices.Contains(br.PCRs, 16) || !slices.Contains(br.PCRs, 23) {
		t.Errorf("quoted PCRs %v lack the required 16 and 23", br.PCRs)
	}
	// Something extended PCR 16 without an entry in the log.
	if err := (&elt.Log{Events: []elt.Event{elt.NewEvent(16, elt.EV_EFI_ACTION, []byte("hidden"))}}).ExtendTPM(sim); err != nil {
		t.Fatal(err)
	}
	_, err = e.finishWithLog(d, good.Bytes())
	wantCode(t, err, api.CodeEventLogMismatch)
}

// TestFinishCarriesLargeEventLog: the HTTPS finish takes a body with an
// event log up to api.MaxEventLogBytes (MaxRequestBytes alone would refuse
// it as bad_request before any verification).
func TestFinishCarriesLargeEventLog(t *testing.T) {
	e := newEnv(t)
	e.enforce(t, api.GroupSpec{})
	d := newDevice(t, e.mfr)
	bootFirmware(t, elt.New(goodFirmware))
	_, err := e.finishWithLog(d, bytes.Repeat([]byte{0xee}, api.MaxEventLogBytes))
	wantCode(t, err, api.CodeEventLogMismatch)
	_, err = e.finishWithLog(d, bytes.Repeat([]byte{0xee}, api.MaxEventLogBytes+1))
	wantCode(t, err, api.CodeBadRequest)
}

// TestFirmwareAdmin: roles, validation, conflicts and audit of the
// firmware admin API over HTTPS.
func TestFirmwareAdmin(t *testing.T) {
	e := newEnv(t)
	digest := func(i int) string { return fmt.Sprintf("%064x", i) }
	cred := func(role pki.Role, name string) *http.Client {
		c, err := e.ca.IssueOperator(role, name, 0)
		if err != nil {
			t.Fatal(err)
		}
		return e.clientWith(c)
	}
	operator, viewer := cred(pki.RoleOperator, "alice"), cred(pki.RoleViewer, "bob")
	call := func(c *http.Client, path string, req, resp any) api.Code {
		t.Helper()
		var body io.Reader
		method := http.MethodGet
		if req != nil {
			b, _ := json.Marshal(req)
			body, method = bytes.NewReader(b), http.MethodPost
		}
		hreq, _ := http.NewRequest(method, e.url+path, body)
		hreq.Header.Set("Content-Type", api.ContentTypeJSON)
		hresp, err := c.Do(hreq)
		if err != nil {
			t.Fatal(err)
		}
		defer hresp.Body.Close()
		raw, _ := io.ReadAll(hresp.Body)
		if hresp.StatusCode != http.StatusOK {
			return errorCode(t, string(raw))
		}
		if resp != nil {
			if err := json.Unmarshal(raw, resp); err != nil {
				t.Fatal(err)
			}
		}
		return ""
	}
	add := &api.FirmwareAddRequest{Group: "line-a", References: []api.FirmwareDigest{{Digest: digest(1), Name: "fw 1"}, {Digest: digest(2), Name: "fw 2"}}}
	if code := call(viewer, api.PathAdminFirmware, add, nil); code != api.CodeForbidden {
		t.Errorf("viewer add: %s, want forbidden", code)
	}
	var added api.FirmwareAddResponse
	if code := call(operator, api.PathAdminFirmware, add, &added); code != "" || added.Added != 2 {
		t.Fatalf("operator add: %s %+v", code, added)
	}
	if code := call(operator, api.PathAdminFirmware, add, &added); code != "" || added.Unchanged != 2 {
		t.Errorf("add again: %s %+v, want unchanged", code, added)
	}
	for _, tc := range []struct {
		name string
		req  any
		path string
		code api.Code
	}{
		{"name taken by another digest", &api.FirmwareAddRequest{Group: "line-a", References: []api.FirmwareDigest{{Digest: digest(3), Name: "fw 1"}}}, api.PathAdminFirmware, api.CodeConflict},
		{"upper-case digest", &api.FirmwareAddRequest{Group: "line-a", References: []api.FirmwareDigest{{Digest: strings.ToUpper(digest(0xab)), Name: "x"}}}, api.PathAdminFirmware, api.CodeBadRequest},
		{"unknown golden device", &api.FirmwareAddRequest{Group: "line-a", FromDevice: digest(9)}, api.PathAdminFirmware, api.CodeNotFound},
		{"digests and a device", &api.FirmwareAddRequest{Group: "line-a", FromDevice: digest(9), References: add.References}, api.PathAdminFirmware, api.CodeBadRequest},
		{"retire unknown", &api.FirmwareRetireRequest{Group: "line-a", Digests: []string{digest(1), digest(7)}}, api.PathAdminFirmwareRetire, api.CodeNotFound},
		{"viewer retires", &api.FirmwareRetireRequest{Group: "line-a", Digests: []string{digest(1)}}, api.PathAdminFirmwareRetire, api.CodeForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := operator
			if strings.HasPrefix(tc.name, "viewer") {
				c = viewer
			}
			if code := call(c, tc.path, tc.req, nil); code != tc.code {
				t.Errorf("got %q, want %s", code, tc.code)
			}
		})
	}
	var retired api.FirmwareRetireResponse
	if code := call(operator, api.PathAdminFirmwareRetire, &api.FirmwareRetireRequest{Group: "line-a", Digests: []string{digest(1)}, Reason: "CVE"}, &retired); code != "" || retired.Retired != 1 || retired.Active != 1 {
		t.Fatalf("retire: %s %+v", code, retired)
	}
	var l api.FirmwareList
	if code := call(viewer, api.PathAdminFirmware+"?group=line-a", nil, &l); code != "" || len(l.References) != 1 || l.References[0].Digest != digest(2) {
		t.Errorf("viewer list: %s %+v", code, l)
	}
	if code := call(viewer, api.PathAdminFirmware+"?retired=true&limit=1", nil, &l); code != "" || len(l.References) != 1 || l.NextPageToken != "line-a/"+digest(1) {
		t.Errorf("first page: %s %+v", code, l)
	}
	if code := call(viewer, api.PathAdminFirmware+"?retired=true&after="+l.NextPageToken, nil, &l); code != "" || len(l.References) != 1 || l.References[0].Digest != digest(2) {
		t.Errorf("second page: %s %+v", code, l)
	}
	// The name of a retired reference is free again; re-adding its digest
	// reactivates it.
	if code := call(operator, api.PathAdminFirmware, &api.FirmwareAddRequest{Group: "line-a", References: []api.FirmwareDigest{{Digest: digest(1), Name: "fw 1 again"}}}, &added); code != "" || added.Reactivated != 1 {
		t.Errorf("reactivate: %s %+v", code, added)
	}
	adds, retires := e.audit("firmware.add", ""), e.audit("firmware.retire", "")
	outcomes := func(recs []*store.AuditRecord) (ok, refused int) {
		for _, r := range recs {
			if r.Outcome == "success" {
				ok++
			} else {
				refused++
			}
		}
		return
	}
	if ok, refused := outcomes(adds); ok != 3 || refused != 5 {
		t.Errorf("firmware.add audit: %d success, %d refused; want 3, 5", ok, refused)
	}
	if ok, refused := outcomes(retires); ok != 1 || refused != 2 {
		t.Errorf("firmware.retire audit: %d success, %d refused; want 1, 2", ok, refused)
	}
}
