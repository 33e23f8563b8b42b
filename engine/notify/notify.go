// Package notify tells an administrator that a job (backup, restore,
// check ...) has finished: by e-mail (mailto: targets, sent through the
// SMTP server from Config) or by a JSON POST to a webhook (http:// and
// https:// targets).
//
// Secrets stay out of every message and error this package produces: the
// SMTP password is read only when it is needed and never formatted, and
// webhook URLs, whose paths and queries often carry tokens, are shown as
// scheme://host only.
package notify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"net/url"
	"os"
	"strings"
	"time"
)

// Version is the vmvault version sent in the User-Agent and the e-mail
// footer. The build sets it with
// -ldflags "-X github.com/vmvault/vmvault/engine/notify.Version=1.2.3".
var Version = "dev"

// Event statuses.
const (
	StatusOK     = "ok"
	StatusFailed = "failed"
)

// ErrBadTarget is wrapped by errors about malformed notification targets.
var ErrBadTarget = errors.New("bad notification target")

// Event describes a finished job. Its JSON form is the webhook body.
type Event struct {
	Event    string    `json:"event"`  // job kind: "backup", "restore", "check" ...
	Status   string    `json:"status"` // StatusOK or StatusFailed
	VM       string    `json:"vm"`
	RP       string    `json:"rp"` // recovery point ID, e.g. 2026-11-26T101500Z
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Bytes    int64     `json:"bytes"`
	Error    string    `json:"error"` // empty when Status is ok
	Host     string    `json:"host"`  // backup server; Notify fills it in when empty
}

func (ev Event) validate() error {
	if strings.TrimSpace(ev.Event) == "" {
		return errors.New("notify: event: no job kind (Event.Event)")
	}
	if ev.Status != StatusOK && ev.Status != StatusFailed {
		return fmt.Errorf("notify: event: status %q: want %q or %q", ev.Status, StatusOK, StatusFailed)
	}
	return nil
}

// Notifier sends notifications. The zero value is ready to use: SMTP
// settings come from the environment (ConfigFromEnv) and HTTP uses
// defaults.
type Notifier struct {
	// SMTP is the mail server for mailto: targets; nil = ConfigFromEnv()
	// at the time of sending.
	SMTP *Config
	// HTTP is the client for webhooks; nil = a client that does not follow
	// redirects (a POST redirected to a GET would "succeed" with the body
	// dropped).
	HTTP *http.Client
	// Timeout bounds one webhook attempt or one SMTP conversation;
	// 0 = 30 s.
	Timeout time.Duration
	// Retries is how often a webhook POST is retried after a network
	// error, a 5xx or a 429: 0 = 3, negative = never.
	Retries int
	// Backoff is the delay before the first retry, doubled for each
	// further one; 0 = 1 s (so 1 s, 2 s, 4 s).
	Backoff time.Duration
	// Logf, when set, is told about retries.
	Logf func(format string, args ...any)
}

// Notify sends ev to target with a zero Notifier.
func Notify(ctx context.Context, target string, ev Event) error {
	var n Notifier
	return n.Notify(ctx, target, ev)
}

// ValidateTarget checks a target without sending anything, so that a
// command can refuse a bad --notify before a two-hour restore, not after.
func ValidateTarget(target string) error {
	_, _, err := parseTarget(target)
	return err
}

// Notify sends ev to target: "mailto:addr[,addr...]", "https://..." or
// "http://...".
func (n *Notifier) Notify(ctx context.Context, target string, ev Event) error {
	addrs, u, err := parseTarget(target)
	if err != nil {
		return err
	}
	if err := ev.validate(); err != nil {
		return err
	}
	if ev.Host == "" {
		ev.Host, _ = os.Hostname()
	}
	if u != nil {
		return n.post(ctx, u, ev)
	}
	cfg := n.SMTP
	if cfg == nil {
		c, err := ConfigFromEnv()
		if err != nil {
			return err
		}
		cfg = &c
	}
	return n.mail(ctx, cfg, addrs, ev)
}

// NotifyAll sends ev to every target and joins the errors; one bad target
// does not keep the others from being told.
func (n *Notifier) NotifyAll(ctx context.Context, targets []string, ev Event) error {
	var errs []error
	for _, t := range targets {
		errs = append(errs, n.Notify(ctx, t, ev))
	}
	return errors.Join(errs...)
}

func (n *Notifier) timeout() time.Duration {
	if n.Timeout > 0 {
		return n.Timeout
	}
	return 30 * time.Second
}

func (n *Notifier) logf(format string, args ...any) {
	if n.Logf != nil {
		n.Logf(format, args...)
	}
}

// parseTarget returns the addresses of a mailto: target or the URL of a
// webhook.
func parseTarget(target string) ([]*mail.Address, *url.URL, error) {
	t := strings.TrimSpace(target)
	scheme, rest, ok := strings.Cut(t, ":")
	if !ok && strings.Contains(t, "@") && !strings.ContainsAny(t, "/ ") {
		return nil, nil, fmt.Errorf("notify: target %q: no scheme; did you mean mailto:%s?: %w", t, t, ErrBadTarget)
	}
	if !ok || t == "" {
		return nil, nil, fmt.Errorf("notify: target %q: want mailto:ADDR[,ADDR], https://... or http://...: %w", redact(t), ErrBadTarget)
	}
	switch strings.ToLower(scheme) {
	case "mailto":
		if strings.Contains(rest, "?") {
			return nil, nil, fmt.Errorf("notify: target %q: mailto headers (?subject=...) are not supported: %w", t, ErrBadTarget)
		}
		list, err := url.PathUnescape(rest)
		if err != nil {
			return nil, nil, fmt.Errorf("notify: target %q: %v: %w", t, err, ErrBadTarget)
		}
		if strings.Trim(list, " ,") == "" {
			return nil, nil, fmt.Errorf("notify: target %q: no e-mail address after mailto: %w", t, ErrBadTarget)
		}
		addrs, err := mail.ParseAddressList(list)
		if err != nil {
			return nil, nil, fmt.Errorf("notify: target %q: bad e-mail address: %v: %w", t, err, ErrBadTarget)
		}
		return addrs, nil, nil
	case "http", "https":
		u, err := url.Parse(t)
		if err != nil {
			return nil, nil, fmt.Errorf("notify: target %q: not a URL: %w", redact(t), ErrBadTarget)
		}
		if u.Host == "" {
			return nil, nil, fmt.Errorf("notify: target %q: URL has no host: %w", redact(t), ErrBadTarget)
		}
		return nil, u, nil
	default:
		return nil, nil, fmt.Errorf("notify: target %q: unsupported scheme %q (want mailto:, https:// or http://): %w",
			redact(t), scheme, ErrBadTarget)
	}
}

// redact shortens a URL to scheme://host so tokens in paths, queries and
// user info never reach a log.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.Host != "" {
		return u.Scheme + "://" + u.Host
	}
	if i := strings.Index(s, "://"); i >= 0 && i+3 < len(s) {
		return s[:i+3] + "(redacted)"
	}
	return s
}
