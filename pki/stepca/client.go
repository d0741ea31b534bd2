package stepca

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
	"strings"
	"time"
	"unicode"
)

// The wire types of step-ca's API (github.com/smallstep/certificates/api),
// only the fields we use. step-ca adds fields over time, so responses are
// decoded leniently, but bounded.

// signRequest is POST /1.0/sign's body.
type signRequest struct {
	CSR      string `json:"csr"` // PEM
	OTT      string `json:"ott"`
	NotAfter string `json:"notAfter,omitempty"` // RFC 3339
}

// signResponse is its answer.
type signResponse struct {
	Leaf      string   `json:"crt"`       // PEM
	Issuer    string   `json:"ca"`        // PEM
	CertChain []string `json:"certChain"` // PEM each: leaf, intermediates
}

// errorResponse is the body of a step-ca error.
type errorResponse struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
}

// provisionersResponse is GET /1.0/provisioners' answer.
type provisionersResponse struct {
	Provisioners []json.RawMessage `json:"provisioners"`
	NextCursor   string            `json:"nextCursor"`
}

func newHTTPClient(roots *x509.CertPool, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: timeout,
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
		},
		// step-ca does not redirect its API; a redirect is a misconfigured
		// URL, and following it would send the token elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// revokeRequest is POST /1.0/revoke's body.
type revokeRequest struct {
	Serial     string `json:"serial"` // decimal, or hex with 0x
	OTT        string `json:"ott"`
	ReasonCode int    `json:"reasonCode"`
	Reason     string `json:"reason"`
	// Passive must be true: step-ca implements nothing else.
	Passive bool `json:"passive"`
}

// do sends one request to step-ca and returns the body of a 2xx answer.
// Everything else becomes ErrUnavailable (no answer, 5xx), ErrProvisioner
// (401) or ErrRefused (other 4xx, and 501), with step-ca's message.
func (iss *Issuer) do(ctx context.Context, method, url string, body []byte) ([]byte, error) {
	code, status, data, err := iss.send(ctx, method, url, body)
	if err != nil {
		return nil, err
	}
	switch {
	case code >= 200 && code < 300:
		return data, nil
	case code == http.StatusUnauthorized:
		return nil, fmt.Errorf("%w: step-ca answered %s to the token of provisioner %q (%s): %s; check that it is a %s provisioner of this CA, that the %s, and that the clocks agree",
			ErrProvisioner, status, iss.cfg.provisioner, &iss.cfg.cred, errorMessage(data), iss.cfg.cred.kind(), iss.credentialHint())
	case code == http.StatusNotImplemented:
		// Not a passing failure: step-ca lacks the feature (a revocation
		// without a database), and retrying will not help.
		return nil, fmt.Errorf("%w: %s %s answered %s: %s", ErrRefused, method, url, status, errorMessage(data))
	case code >= 500:
		return nil, fmt.Errorf("%w: %s %s answered %s: %s", ErrUnavailable, method, url, status, errorMessage(data))
	default:
		return nil, fmt.Errorf("%w: %s %s answered %s: %s", ErrRefused, method, url, status, errorMessage(data))
	}
}

// credentialHint says what must match for step-ca to accept our tokens.
func (iss *Issuer) credentialHint() string {
	if iss.cfg.cred.isX5C() {
		return "x5c certificate chains to its roots and is valid"
	}
	return "key file is its key"
}

// send sends one request and returns the answer's status and body (at
// most MaxResponseBytes); no answer at all is ErrUnavailable.
func (iss *Issuer) send(ctx context.Context, method, url string, body []byte) (code int, status string, data []byte, err error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, "", nil, fmt.Errorf("building request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := iss.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			return 0, "", nil, fmt.Errorf("%w: no answer from %s %s within %s", ErrUnavailable, method, url, iss.cfg.timeout)
		}
		return 0, "", nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	data, err = io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
	if err != nil {
		return 0, "", nil, fmt.Errorf("%w: reading the answer of %s %s: %w", ErrUnavailable, method, url, err)
	}
	if len(data) > MaxResponseBytes {
		return 0, "", nil, fmt.Errorf("%w: %s %s answered more than %d bytes", ErrUnavailable, method, url, MaxResponseBytes)
	}
	return resp.StatusCode, resp.Status, data, nil
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// errorMessage extracts step-ca's message from an error body, clipped and
// made printable: it travels into logs and operator-facing errors.
func errorMessage(body []byte) string {
	var e errorResponse
	msg := ""
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		msg = e.Message
	} else {
		msg = string(body)
	}
	msg = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, strings.TrimSpace(msg))
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage] + "..."
	}
	if msg == "" {
		return "(no message)"
	}
	return fmt.Sprintf("%q", msg)
}

// parseChain decodes a sign response into the leaf and its intermediates.
func parseChain(data []byte) ([]*x509.Certificate, error) {
	var sr signResponse
	if err := json.Unmarshal(data, &sr); err != nil {
		return nil, fmt.Errorf("%w: decoding the sign response: %w", ErrChain, err)
	}
	pems := sr.CertChain
	if len(pems) == 0 { // step-ca before certChain: crt and ca
		pems = []string{sr.Leaf, sr.Issuer}
	}
	if len(pems) > MaxChainCerts {
		return nil, fmt.Errorf("%w: chain of %d certificates; at most %d", ErrChain, len(pems), MaxChainCerts)
	}
	var certs []*x509.Certificate
	for i, p := range pems {
		block, rest := pem.Decode([]byte(p))
		if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: chain entry %d is not one PEM certificate", ErrChain, i)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: chain entry %d: %w", ErrChain, i, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: the sign response holds no certificate", ErrChain)
	}
	return certs, nil
}
