package mqttapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/device"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/httpapi"
	"github.com/edgeenroll/edgeenroll/pki"
)

// tap records the finish request as it goes on the wire, which is what a
// (shared, external) broker sees in plaintext.
type finishTap struct {
	device.Transport
	seen *api.FinishRequest
}

func (t *finishTap) Finish(ctx context.Context, corr string, req *api.FinishRequest, k device.SealKeyFunc) (*api.FinishResponse, error) {
	b, _ := json.Marshal(req)
	t.seen = new(api.FinishRequest)
	json.Unmarshal(b, t.seen)
	return t.Transport.Finish(ctx, corr, req, k)
}

// TestMQTTFinishNotAnsweredOverHTTPS: whoever saw an MQTT finish request
// on the broker cannot replay it to POST /finish for the certificate chain
// and config bundle in the clear.
func TestMQTTFinishNotAnsweredOverHTTPS(t *testing.T) {
	e := newEnv(t)
	hs := httptest.NewServer(httpapi.NewHandler(e.core, httpapi.Options{}))
	defer hs.Close()

	tp := &finishTap{}
	a := e.agent(t, func(tr device.Transport) device.Transport {
		tp.Transport = tr
		return tp
	})
	if _, err := a.Enroll(context.Background(), device.RetryPolicy{Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	if tp.seen == nil {
		t.Fatal("no finish seen")
	}
	b, _ := json.Marshal(tp.seen)
	resp, err := http.Post(hs.URL+api.PathFinish, api.ContentTypeJSON, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ae api.Error
	json.Unmarshal(body, &ae)
	if resp.StatusCode == http.StatusOK || ae.Code != api.CodeNonceUnknownOrUsed {
		t.Errorf("HTTPS replay of the finish the broker saw: HTTP %d %s, want nonce_unknown_or_used", resp.StatusCode, body)
	}
}

// TestRevokedDeviceCannotConnect: a device connects to the broker with its
// certificate, and after an operator revoked it, it cannot (it would get
// its topic's config pushes).
func TestRevokedDeviceCannotConnect(t *testing.T) {
	e := newEnv(t)
	a := e.agent(t)
	res, err := a.Enroll(context.Background(), device.RetryPolicy{Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := a.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.connect(t, res.DeviceID, cert)
	if err != nil {
		t.Fatalf("the enrolled device connects: %v", err)
	}
	c.c.Disconnect(0)
	admin := &enrollserver.Call{CorrelationID: "r", Principal: enrollserver.Principal{Kind: enrollserver.PrincipalOperator, Name: "ada", Role: pki.RoleAdmin}}
	if _, err := e.core.DeviceAction(context.Background(), admin, api.ActionRevoke, &api.DeviceActionRequest{DeviceIDs: []string{res.DeviceID}, Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.connect(t, res.DeviceID, cert); err == nil {
		t.Error("a revoked device connected with its certificate")
	}
}
