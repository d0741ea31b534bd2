package httpapi_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/edgeenroll/edgeenroll/api"
	"github.com/edgeenroll/edgeenroll/enrollserver"
	"github.com/edgeenroll/edgeenroll/enrollserver/admission"
	"github.com/edgeenroll/edgeenroll/enrollserver/enrollservertest"
	"github.com/edgeenroll/edgeenroll/enrollserver/httpapi"
)

// TestSlowBodyLosesSlot: clients that send headers and then trickle the
// body hold every admission slot only for BodyTimeout, not the server's
// ReadTimeout: a well-formed request behind them is served.
func TestSlowBodyLosesSlot(t *testing.T) {
	srv := enrollservertest.New(t, enrollserver.Config{}, nil).Server
	ctrl, err := admission.New(&admission.Options{Slots: 2, MaxWait: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(httpapi.NewHandler(srv, httpapi.Options{Admission: ctrl, BodyTimeout: 500 * time.Millisecond}))
	ts.Config.ReadTimeout = 15 * time.Second // as enrolld
	ts.Start()
	defer ts.Close()
	addr := ts.Listener.Addr().String()
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 100000\r\n\r\n{", api.PathBegin, api.ContentTypeJSON)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	resp, err := http.Post(ts.URL+api.PathBegin, api.ContentTypeJSON, bytes.NewReader([]byte(`{}`)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusTooManyRequests {
		t.Errorf("a request behind two slow bodies was refused busy after %v: %s", time.Since(start), body)
	}
}
