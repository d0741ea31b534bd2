package device

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
)

// TransientError is a failure worth retrying: the network, a 5xx, a 429, or
// a session the server no longer knows.
type TransientError struct {
	Err        error
	RetryAfter time.Duration // the server's hint, 0 if none
}

func (e *TransientError) Error() string { return e.Err.Error() }
func (e *TransientError) Unwrap() error { return e.Err }

// Transport carries the protocol's messages to the server. HTTPS is the
// default; MQTT implements the same interface. Errors follow one rule: an
// *api.Error for a server refusal, wrapped in *TransientError when retrying
// could help (network, 5xx, 429, pending approval).
type Transport interface {
	Begin(ctx context.Context, correlationID string, req *api.BeginRequest) (*api.BeginResponse, error)
	// Finish sends the answer. A transport whose answers pass through a
	// third party (MQTT) opens the sealed reply with sealKey, which derives
	// the session's key from the activation secret in the TPM.
	Finish(ctx context.Context, correlationID string, req *api.FinishRequest, sealKey SealKeyFunc) (*api.FinishResponse, error)
	// Whoami calls the server authenticated by the device certificate.
	Whoami(ctx context.Context, correlationID string) (*api.WhoamiResponse, error)
	Close() error
}

// PushTransport is a transport on which the server can push config
// bundles to a connected device (MQTT).
type PushTransport interface {
	Transport
	// Listen keeps the device connected until ctx ends.
	Listen(ctx context.Context)
	// Pushes delivers pushed bundles (compact JWS), unverified.
	Pushes() <-chan string
}

// certificateObserver is a transport that must hear when the device's
// certificate changes, to stop using connections made with the old one.
type certificateObserver interface {
	CertificateChanged()
}

// SealKeyFunc returns the sealing key of the session being finished.
type SealKeyFunc func() ([]byte, error)

// CertificateSource gives a transport the device's current mTLS
// certificate, whose key is in the TPM.
type CertificateSource interface {
	TLSCertificate() (*tls.Certificate, error)
}

// NewHTTPSTransport speaks HTTPS to baseURL, trusting only roots. Begin and
// finish share one kept-alive connection (one TLS handshake). A device that
// holds a certificate valid for a while yet (from certs) presents it on
// begin and finish, so the server can tell a renewal from a first
// enrollment before reading the request and give it priority under load;
// Whoami always presents it.
func NewHTTPSTransport(baseURL string, roots *x509.CertPool, certs CertificateSource) Transport {
	t := &httpsTransport{certs: certs, plain: newHTTPClient(baseURL, roots, nil)}
	if certs != nil {
		t.mtls = newHTTPClient(baseURL, roots, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certs.TLSCertificate()
		})
	}
	return t
}

// renewalCertMargin is the least validity a certificate must have left to
// be presented on begin: one that expires during the enrollment would fail
// the handshake.
const renewalCertMargin = 2 * time.Minute

type httpsTransport struct {
	certs       CertificateSource
	plain, mtls *httpClient
	// enroll is the client of the last begin, which its finish reuses.
	mu     sync.Mutex
	enroll *httpClient
}

// enrollClient is the client a begin uses: the mTLS one while the device
// holds a certificate that stays valid through the enrollment.
func (t *httpsTransport) enrollClient() *httpClient {
	if t.mtls == nil {
		return t.plain
	}
	c, err := t.certs.TLSCertificate()
	if err != nil || c.Leaf == nil || time.Until(c.Leaf.NotAfter) < renewalCertMargin {
		return t.plain
	}
	return t.mtls
}

func (t *httpsTransport) Begin(ctx context.Context, corr string, req *api.BeginRequest) (*api.BeginResponse, error) {
	c := t.enrollClient()
	var resp api.BeginResponse
	err := c.do(ctx, http.MethodPost, api.PathBegin, corr, req, &resp)
	var ae *api.Error
	if err != nil && c == t.mtls && !errors.As(err, &ae) && ctx.Err() == nil {
		// The server did not answer over the certificate's connection
		// (a handshake it refused: a CA it no longer trusts, say): begin
		// as a device without one does. A server that is down fails
		// both ways.
		c, resp = t.plain, api.BeginResponse{}
		err = c.do(ctx, http.MethodPost, api.PathBegin, corr, req, &resp)
	}
	t.mu.Lock()
	t.enroll = c
	t.mu.Unlock()
	return &resp, err
}

// Finish needs no sealing: TLS already ends at the server. It goes over the
// begin's client (a finish resumed after a restart, over the plain one).
func (t *httpsTransport) Finish(ctx context.Context, corr string, req *api.FinishRequest, _ SealKeyFunc) (*api.FinishResponse, error) {
	t.mu.Lock()
	c := t.enroll
	t.mu.Unlock()
	if c == nil {
		c = t.plain
	}
	var resp api.FinishResponse
	return &resp, c.do(ctx, http.MethodPost, api.PathFinish, corr, req, &resp)
}

func (t *httpsTransport) Whoami(ctx context.Context, corr string) (*api.WhoamiResponse, error) {
	if t.mtls == nil {
		return nil, errors.New("whoami needs the device certificate, and this transport has none")
	}
	var resp api.WhoamiResponse
	return &resp, t.mtls.do(ctx, http.MethodGet, api.PathWhoami, corr, nil, &resp)
}

// CertificateChanged drops mTLS connections made with the old certificate.
func (t *httpsTransport) CertificateChanged() {
	if t.mtls != nil {
		t.mtls.close()
	}
}

func (t *httpsTransport) Close() error {
	t.plain.close()
	if t.mtls != nil {
		t.mtls.close()
	}
	return nil
}

// httpClient speaks the HTTPS transport. One client keeps one connection
// alive so begin and finish share a TLS handshake.
type httpClient struct {
	base   string
	client *http.Client
}

func newHTTPClient(base string, roots *x509.CertPool, getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *httpClient {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs:              roots,
			MinVersion:           tls.VersionTLS13,
			GetClientCertificate: getCert,
		},
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
	}
	if getCert == nil {
		// Resume TLS sessions across reconnects (a flaky link, a renewal
		// a day later): a resumed handshake skips the server's signature
		// and certificate verification. Not for mTLS, where a resumed
		// session would carry the identity of the certificate it began
		// with.
		tr.TLSClientConfig.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	}
	return &httpClient{base: base, client: &http.Client{Transport: tr}}
}

func (c *httpClient) close() { c.client.CloseIdleConnections() }

// do sends req (nil for GET) and decodes a 200 response into resp. A non-2xx
// answer becomes an *api.Error, wrapped in *TransientError when retrying
// could help.
func (c *httpClient) do(ctx context.Context, method, path, correlationID string, req, resp any) error {
	var body io.Reader
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return fmt.Errorf("encoding %s request: %w", path, err)
		}
		body = bytes.NewReader(b)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("building %s request: %w", path, err)
	}
	if req != nil {
		hreq.Header.Set("Content-Type", api.ContentTypeJSON)
	}
	if correlationID != "" {
		hreq.Header.Set(api.HeaderCorrelationID, correlationID)
	}
	hresp, err := c.client.Do(hreq)
	if err != nil {
		// A request that ran out of its own time is worth another try;
		// the caller stops retrying when its own context ends.
		if errors.Is(ctx.Err(), context.Canceled) {
			return fmt.Errorf("%s %s: %w", method, path, ctx.Err())
		}
		return &TransientError{Err: fmt.Errorf("%s %s: %w", method, path, err)}
	}
	defer hresp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(hresp.Body, api.MaxResponseBytes+1))
	if err != nil {
		return &TransientError{Err: fmt.Errorf("%s %s: reading response: %w", method, path, err)}
	}
	if len(raw) > api.MaxResponseBytes {
		return fmt.Errorf("%s %s: response exceeds %d bytes", method, path, api.MaxResponseBytes)
	}
	if hresp.StatusCode != http.StatusOK {
		return responseError(method, path, hresp, raw)
	}
	if err := json.Unmarshal(raw, resp); err != nil {
		return fmt.Errorf("%s %s: decoding response: %w", method, path, err)
	}
	return nil
}

func responseError(method, path string, hresp *http.Response, raw []byte) error {
	var ae api.Error
	if err := json.Unmarshal(raw, &ae); err != nil || ae.Code == "" {
		ae = api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("HTTP %d without an error body", hresp.StatusCode)}
		if hresp.StatusCode < 500 && hresp.StatusCode != http.StatusTooManyRequests {
			ae.Code = api.CodeBadRequest
		}
	}
	err := fmt.Errorf("%s %s: %w", method, path, &ae)
	if hresp.StatusCode >= 500 || hresp.StatusCode == http.StatusTooManyRequests || !ae.Code.Permanent() {
		te := &TransientError{Err: err}
		if s, perr := strconv.Atoi(hresp.Header.Get("Retry-After")); perr == nil {
			te.RetryAfter = retryAfter(s)
		}
		return te
	}
	return err
}

// MaxRetryAfter is the longest server Retry-After a device honours (the
// server's own never exceed an hour). Past it, from a misconfigured proxy
// or a reply forged on an MQTT broker, the device's own backoff applies.
const MaxRetryAfter = time.Hour

// retryAfter is a Retry-After of s seconds, within 0..MaxRetryAfter.
func retryAfter(s int) time.Duration {
	if s <= 0 {
		return 0
	}
	return time.Duration(min(s, int(MaxRetryAfter/time.Second))) * time.Second
}

// IsTransient reports whether err is worth retrying.
func IsTransient(err error) bool {
	var te *TransientError
	return errors.As(err, &te)
}
