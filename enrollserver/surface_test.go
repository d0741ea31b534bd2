package enrollserver_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/pki"
)

// client returns an HTTPS client presenting cert (nil for none).
func (e *env) clientWith(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: e.ca.RootPool()}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
}

func get(t *testing.T, c *http.Client, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func errorCode(t *testing.T, body string) api.Code {
	t.Helper()
	var ae api.Error
	if err := json.Unmarshal([]byte(body), &ae); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return ae.Code
}

// TestHTTPSurface checks the endpoints around enrollment: health, metrics,
// mTLS identity, admin authorization, correlation IDs.
func TestHTTPSurface(t *testing.T) {
	e := newEnv(t)
	d := newDevice(t, e.mfr)
	br := e.begin(d)
	var fr api.FinishResponse
	if err := e.post(api.PathFinish, d.finish(br, br.Nonce), &fr); err != nil {
		t.Fatal(err)
	}

	// A device TLS certificate whose key is the TPM key.
	key, err := d.tpm.LoadKey(d.keyBlob)
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	priv, err := key.Private(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	deviceCert := &tls.Certificate{Certificate: fr.CertificateChain, PrivateKey: priv}
	operatorCert, err := e.ca.IssueOperator(pki.RoleViewer, "alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	// Issued by the CA, but never through enrollment: not a device.
	stray, err := e.ca.IssueOperator(pki.RoleViewer, "stray", 0)
	if err != nil {
		t.Fatal(err)
	}

	anon, dev, op := e.clientWith(nil), e.clientWith(deviceCert), e.clientWith(operatorCert)
	cases := []struct {
		name     string
		client   *http.Client
		path     string
		status   int
		code     api.Code
		contains string
	}{
		{"healthz", anon, api.PathHealthz, 200, "", "ok"},
		{"readyz", anon, api.PathReadyz, 200, "", "ready"},
		{"metrics", anon, api.PathMetrics, 200, "", `edgeenroll_enrollments_total{code="",outcome="success"} 1`},
		{"whoami without certificate", anon, api.PathWhoami, 401, api.CodeUnauthenticated, ""},
		{"whoami with device certificate", dev, api.PathWhoami, 200, "", br.DeviceID},
		{"whoami with operator certificate", op, api.PathWhoami, 401, api.CodeUnauthenticated, ""},
		{"whoami with a stray certificate", e.clientWith(stray), api.PathWhoami, 401, api.CodeUnauthenticated, ""},
		{"admin without certificate", anon, api.PathAdminDevices, 401, api.CodeUnauthenticated, ""},
		{"admin with device certificate", dev, api.PathAdminDevices, 403, api.CodeForbidden, ""},
		{"admin with operator certificate", op, api.PathAdminDevices, 200, "", br.DeviceID},
		{"unknown path", anon, "/v1/nope", 404, api.CodeNotFound, ""},
		{"wrong method", anon, api.PathBegin, 405, api.CodeMethodNotAllowed, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, tc.client, e.url+tc.path, nil)
			if resp.StatusCode != tc.status {
				t.Fatalf("HTTP %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.code != "" {
				if got := errorCode(t, body); got != tc.code {
					t.Errorf("code %s, want %s", got, tc.code)
				}
			}
			if !strings.Contains(body, tc.contains) {
				t.Errorf("body lacks %q:\n%.2000s", tc.contains, body)
			}
		})
	}

	t.Run("correlation id", func(t *testing.T) {
		resp, _ := get(t, dev, e.url+api.PathWhoami, map[string]string{api.HeaderCorrelationID: "abc-123"})
		if got := resp.Header.Get(api.HeaderCorrelationID); got != "abc-123" {
			t.Errorf("echoed %q, want abc-123", got)
		}
		for _, bad := range []string{"bad id", strings.Repeat("x", api.MaxCorrelationIDLen+1), "a;b"} {
			resp, _ = get(t, dev, e.url+api.PathWhoami, map[string]string{api.HeaderCorrelationID: bad})
			if got := resp.Header.Get(api.HeaderCorrelationID); got == "" || got == bad {
				t.Errorf("malformed id %q not replaced: %q", bad, got)
			}
		}
	})

	t.Run("wrong content type", func(t *testing.T) {
		resp, err := anon.Post(e.url+api.PathBegin, "text/plain", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || errorCode(t, string(b)) != api.CodeBadRequest {
			t.Errorf("HTTP %d %s", resp.StatusCode, b)
		}
	})
}
