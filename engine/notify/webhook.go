package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
)

var defaultHTTP = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// post sends ev as JSON to u, retrying network errors, 5xx and 429 with
// exponential backoff.
func (n *Notifier) post(ctx context.Context, u *url.URL, ev Event) error {
	ev.Started, ev.Finished = ev.Started.UTC(), ev.Finished.UTC()
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("notify: encode event: %w", err)
	}
	client := n.HTTP
	if client == nil {
		client = defaultHTTP
	}
	retries := n.Retries
	switch {
	case retries == 0:
		retries = 3
	case retries < 0:
		retries = 0
	}
	backoff := n.Backoff
	if backoff <= 0 {
		backoff = time.Second
	}
	where := "notify: webhook " + redact(u.String())
	attempts := retries + 1
	for attempt := 1; ; attempt++ {
		retry, err := n.postOnce(ctx, client, u, body)
		if err == nil {
			return nil
		}
		if !retry || attempt == attempts || ctx.Err() != nil {
			if attempt > 1 {
				return fmt.Errorf("%s: giving up after %d attempts: %w", where, attempt, err)
			}
			return fmt.Errorf("%s: %w", where, err)
		}
		n.logf("%s: attempt %d of %d: %v; retrying in %v", where, attempt, attempts, err, backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (after attempt %d: %v)", where, ctx.Err(), attempt, err)
		case <-t.C:
		}
		backoff *= 2
	}
}

// HTTPError is a webhook's non-2xx answer.
type HTTPError struct {
	StatusCode int
	Status     string
	Body       string // the start of the response body, on one line
}

func (e *HTTPError) Error() string {
	if e.Body == "" {
		return "HTTP " + e.Status
	}
	return fmt.Sprintf("HTTP %s: %s", e.Status, e.Body)
}

// postOnce makes one attempt and says whether a failure is worth a retry.
func (n *Notifier) postOnce(ctx context.Context, client *http.Client, u *url.URL, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return false, errors.New("cannot build request") // the URL parsed already; do not echo it
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "vmvault/"+Version)
	resp, err := client.Do(req)
	if err != nil {
		// *url.Error repeats the full URL, tokens and all: keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return true, err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return false, nil
	}
	he := &HTTPError{StatusCode: resp.StatusCode, Status: resp.Status, Body: oneLine(string(snippet), 200)}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		he.Body = "redirects are not followed; use the final URL"
	}
	return resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests, he
}

// oneLine squeezes s onto one printable line of at most max runes.
func oneLine(s string, max int) string {
	s = strings.Join(strings.FieldsFunc(s, unicode.IsSpace), " ")
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, s)
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return s
}
