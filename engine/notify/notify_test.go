package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// hook is a test webhook answering with the given status codes in turn
// (the last one repeats) and recording what it was sent.
type hook struct {
	codes []int
	calls atomic.Int32
	last  atomic.Value // map[string]any of the last JSON body
	hdr   atomic.Value // http.Header of the last request
}

func startHook(t *testing.T, codes ...int) (*hook, *httptest.Server) {
	h := &hook{codes: codes}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(h.calls.Add(1)) - 1
		if r.Method != http.MethodPost {
			http.Error(w, "want POST", http.StatusMethodNotAllowed)
			return
		}
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		h.last.Store(body)
		h.hdr.Store(r.Header.Clone())
		code := h.codes[min(i, len(h.codes)-1)]
		if code == http.StatusFound {
			http.Redirect(w, r, "/elsewhere", code)
			return
		}
		w.WriteHeader(code)
		if code >= 300 {
			fmt.Fprintf(w, "  down for\n maintenance (call %d)  ", i+1)
		}
	}))
	t.Cleanup(srv.Close)
	return h, srv
}

func fastNotifier() *Notifier {
	return &Notifier{Backoff: 5 * time.Millisecond, Timeout: 5 * time.Second}
}

func TestWebhookJSON(t *testing.T) {
	h, srv := startHook(t, http.StatusNoContent)
	ev := restoreEvent()
	// A non-UTC time is sent as UTC.
	ev.Started = ev.Started.In(time.FixedZone("CET", 3600))
	if err := fastNotifier().Notify(context.Background(), srv.URL+"/hooks/vmvault?token=abc", ev); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"event": "restore", "status": "ok", "vm": "web01", "rp": "2026-11-26T101500Z",
		"started": "2026-11-26T10:15:00Z", "finished": "2026-11-26T10:17:03Z",
		"bytes": float64(1288490188), "error": "", "host": "backup01",
	}
	if got := h.last.Load().(map[string]any); !reflect.DeepEqual(got, want) {
		t.Errorf("JSON body\n got %v\nwant %v", got, want)
	}
	hdr := h.hdr.Load().(http.Header)
	if ua := hdr.Get("User-Agent"); ua != "vmvault/"+Version || Version != "dev" {
		t.Errorf("User-Agent %q", ua)
	}
	if ct := hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if n := h.calls.Load(); n != 1 {
		t.Errorf("%d calls", n)
	}
}

func TestWebhookFillsHost(t *testing.T) {
	h, srv := startHook(t, http.StatusOK)
	ev := restoreEvent()
	ev.Host = ""
	if err := fastNotifier().Notify(context.Background(), srv.URL, ev); err != nil {
		t.Fatal(err)
	}
	if host, _ := h.last.Load().(map[string]any)["host"].(string); host == "" {
		t.Error("empty host not filled in")
	}
}

func TestWebhookRetriesThenSucceeds(t *testing.T) {
	h, srv := startHook(t, http.StatusInternalServerError, http.StatusOK)
	n := fastNotifier()
	var logged []string
	n.Logf = func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }
	if err := n.Notify(context.Background(), srv.URL, restoreEvent()); err != nil {
		t.Fatal(err)
	}
	if c := h.calls.Load(); c != 2 {
		t.Errorf("%d calls, want 2 (500, then 200)", c)
	}
	if len(logged) != 1 || !strings.Contains(logged[0], "attempt 1 of 4: HTTP 500 Internal Server Error") {
		t.Errorf("retry log %q", logged)
	}
}

func TestWebhookGivesUp(t *testing.T) {
	h, srv := startHook(t, http.StatusServiceUnavailable)
	start := time.Now()
	err := fastNotifier().Notify(context.Background(), srv.URL+"/secret-path?token=s3cret", restoreEvent())
	if c := h.calls.Load(); c != 4 {
		t.Errorf("%d calls, want 4 (1 + 3 retries)", c)
	}
	// Backoff 5, 10, 20 ms.
	if d := time.Since(start); d < 35*time.Millisecond {
		t.Errorf("gave up after %v: no backoff", d)
	}
	want := "notify: webhook " + srv.URL + ": giving up after 4 attempts: HTTP 503 Service Unavailable: down for maintenance (call 4)"
	if err == nil || err.Error() != want {
		t.Fatalf("err\n %v\nwant\n %s", err, want)
	}
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 503 {
		t.Errorf("errors.As HTTPError: %v", err)
	}
	if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "secret-path") {
		t.Errorf("token leaked: %v", err)
	}
}

func TestWebhookClientErrorsAreNotRetried(t *testing.T) {
	for _, tc := range []struct {
		code int
		want string
	}{
		{http.StatusBadRequest, "HTTP 400 Bad Request: down for maintenance (call 1)"},
		{http.StatusFound, "HTTP 302 Found: redirects are not followed; use the final URL"},
	} {
		h, srv := startHook(t, tc.code)
		err := fastNotifier().Notify(context.Background(), srv.URL, restoreEvent())
		if err == nil || !strings.HasSuffix(err.Error(), tc.want) || strings.Contains(err.Error(), "attempts") {
			t.Errorf("%d: err %v, want one ending in %q", tc.code, err, tc.want)
		}
		if c := h.calls.Load(); c != 1 {
			t.Errorf("%d: %d calls, want 1", tc.code, c)
		}
	}
}

func TestWebhookNetworkError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/hook/t0ken-in-path"
	srv.Close()
	n := fastNotifier()
	n.Retries = 1
	err := n.Notify(context.Background(), url, restoreEvent())
	if err == nil || !strings.Contains(err.Error(), "giving up after 2 attempts") || !strings.Contains(err.Error(), "connect") {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(err.Error(), "t0ken") {
		t.Errorf("URL path leaked through *url.Error: %v", err)
	}
}

func TestWebhookCancelDuringBackoff(t *testing.T) {
	h, srv := startHook(t, http.StatusBadGateway)
	n := &Notifier{Backoff: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	err := n.Notify(ctx, srv.URL, restoreEvent())
	if !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Errorf("err %v after %v, want context.Canceled at once", err, time.Since(start))
	}
	if !strings.Contains(err.Error(), "HTTP 502") {
		t.Errorf("error lost the cause: %v", err)
	}
	if c := h.calls.Load(); c != 1 {
		t.Errorf("%d calls", c)
	}
}

func TestWebhookAttemptTimeout(t *testing.T) {
	// A webhook that never answers: each attempt is cut by Timeout.
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	n := &Notifier{Timeout: 50 * time.Millisecond, Retries: -1}
	start := time.Now()
	err := n.Notify(context.Background(), srv.URL, restoreEvent())
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Errorf("err %v after %v", err, time.Since(start))
	}
}

func TestBadTargets(t *testing.T) {
	for _, tc := range []struct{ target, want string }{
		{"ftp://x", `notify: target "ftp://x": unsupported scheme "ftp" (want mailto:, https:// or http://)`},
		{"mailto:", `notify: target "mailto:": no e-mail address after mailto`},
		{"mailto: , ", "no e-mail address"},
		{"mailto:not-an-address", `notify: target "mailto:not-an-address": bad e-mail address`},
		{"mailto:a@example.com?subject=hi", "mailto headers (?subject=...) are not supported"},
		{"", "want mailto:ADDR[,ADDR], https://... or http://..."},
		{"admin@example.com", `no scheme; did you mean mailto:admin@example.com?`},
		{"hooks.example.com/x", `want mailto:ADDR[,ADDR], https://... or http://...`},
		{"https://", "URL has no host"},
		{"ftp://user:pw@files.example.com/drop", `target "ftp://files.example.com"`},
	} {
		err := ValidateTarget(tc.target)
		err2 := Notify(context.Background(), tc.target, restoreEvent())
		for _, e := range []error{err, err2} {
			if e == nil || !strings.Contains(e.Error(), tc.want) || !errors.Is(e, ErrBadTarget) || !strings.HasPrefix(e.Error(), "notify: ") {
				t.Errorf("%q: %v, want error containing %q", tc.target, e, tc.want)
			}
		}
	}
	for _, ok := range []string{"mailto:a@example.com", "MAILTO:a@example.com,b@example.com", "mailto:a%40example.com", "https://hooks.example.com/x?y=1", "http://10.0.0.5:8080/"} {
		if err := ValidateTarget(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}

func TestBadEvents(t *testing.T) {
	_, srv := startHook(t, http.StatusOK)
	for _, tc := range []struct {
		mod  func(*Event)
		want string
	}{
		{func(e *Event) { e.Status = "success" }, `notify: event: status "success": want "ok" or "failed"`},
		{func(e *Event) { e.Event = "" }, "notify: event: no job kind (Event.Event)"},
	} {
		ev := restoreEvent()
		tc.mod(&ev)
		if err := fastNotifier().Notify(context.Background(), srv.URL, ev); err == nil || err.Error() != tc.want {
			t.Errorf("err %v, want %q", err, tc.want)
		}
	}
}

func TestNotifyAll(t *testing.T) {
	h, srv := startHook(t, http.StatusOK)
	err := fastNotifier().NotifyAll(context.Background(), []string{"ftp://x", srv.URL}, restoreEvent())
	if !errors.Is(err, ErrBadTarget) || h.calls.Load() != 1 {
		t.Errorf("err %v, calls %d: a bad target must not stop the others", err, h.calls.Load())
	}
}

func TestSubject(t *testing.T) {
	ev := restoreEvent()
	for _, tc := range []struct {
		mod  func(*Event)
		want string
	}{
		{func(*Event) {}, "vmvault: restore of web01 (2026-11-26T101500Z) succeeded"},
		{func(e *Event) { e.Status = StatusFailed }, "vmvault: restore of web01 (2026-11-26T101500Z) failed"},
		{func(e *Event) { e.Event, e.RP = "backup", "" }, "vmvault: backup of web01 succeeded"},
		{func(e *Event) { e.Event, e.VM, e.RP = "check", "", "" }, "vmvault: check succeeded"},
	} {
		e := ev
		tc.mod(&e)
		if got := Subject(e); got != tc.want {
			t.Errorf("Subject %q, want %q", got, tc.want)
		}
	}
}
