package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgeenroll/edgeenroll/api"
)

// TestShedder: past its limit the server refuses at once with 429, busy
// and a Retry-After, instead of queueing.
func TestShedder(t *testing.T) {
	s := newShedder(1)
	release, entered := make(chan struct{}), make(chan struct{})
	h := s.wrap(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
	})
	done := make(chan struct{})
	go func() {
		h(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, api.PathBegin, nil))
		close(done)
	}()
	<-entered
	rec := httptest.NewRecorder()
	h(rec, httptest.NewRequest(http.MethodPost, api.PathBegin, nil))
	var ae api.Error
	json.Unmarshal(rec.Body.Bytes(), &ae)
	if rec.Code != http.StatusTooManyRequests || ae.Code != api.CodeBusy || rec.Header().Get("Retry-After") != "1" {
		t.Errorf("over the limit: HTTP %d, code %s, Retry-After %q", rec.Code, ae.Code, rec.Header().Get("Retry-After"))
	}
	close(release)
	<-done
	// The slot is free again.
	rec = httptest.NewRecorder()
	ok := s.wrap(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	ok(rec, httptest.NewRequest(http.MethodPost, api.PathBegin, nil))
	if rec.Code != http.StatusOK {
		t.Errorf("after release: HTTP %d", rec.Code)
	}
}
