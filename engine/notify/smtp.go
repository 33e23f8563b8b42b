package notify

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Environment variables read by ConfigFromEnv and Config.
const (
	EnvSMTPURL      = "VMVAULT_SMTP_URL"
	EnvSMTPPassword = "VMVAULT_SMTP_PASSWORD"
)

// ErrNoSMTP means a mailto: target was given but no SMTP server is set.
var ErrNoSMTP = errors.New("no SMTP server configured")

// StartTLSMode says whether the SMTP connection is upgraded to TLS.
type StartTLSMode int

const (
	// StartTLSAuto upgrades when the server offers STARTTLS. Credentials
	// are still never sent in clear text to a host other than localhost
	// (net/smtp's PLAIN auth refuses), so a stripped STARTTLS makes the
	// send fail rather than leak the password.
	StartTLSAuto StartTLSMode = iota
	// StartTLSRequire fails unless the server offers STARTTLS.
	StartTLSRequire
	// StartTLSOff never upgrades (a relay on a trusted network).
	StartTLSOff
)

func (m StartTLSMode) String() string {
	switch m {
	case StartTLSAuto:
		return "auto"
	case StartTLSRequire:
		return "1"
	case StartTLSOff:
		return "0"
	}
	return fmt.Sprintf("StartTLSMode(%d)", int(m))
}

// Config is the SMTP server used for mailto: targets. It holds no
// password: that is read at send time from PasswordFile or, when that is
// empty, from $VMVAULT_SMTP_PASSWORD, so a Config can be printed or logged.
type Config struct {
	SMTPHost     string
	SMTPPort     int    // 0 = 587, or 465 with ImplicitTLS
	From         string // sender address; "" = vmvault@<hostname>
	Username     string // "" = no authentication
	PasswordFile string
	StartTLS     StartTLSMode
	ImplicitTLS  bool        // TLS from the first byte (smtps://, port 465)
	TLSConfig    *tls.Config // nil = system roots, ServerName = SMTPHost
}

// ConfigFromEnv reads $VMVAULT_SMTP_URL (see ParseSMTPURL).
func ConfigFromEnv() (Config, error) {
	s := os.Getenv(EnvSMTPURL)
	if s == "" {
		return Config{}, fmt.Errorf("notify: mailto target: set %s (e.g. smtp://user@mail.example.com:587?starttls=1&from=vmvault@example.com): %w",
			EnvSMTPURL, ErrNoSMTP)
	}
	return ParseSMTPURL(s)
}

// ParseSMTPURL parses smtp://[user@]host[:port][?starttls=1|0|auto]
// [&from=addr][&password_file=/path], or smtps://... for implicit TLS.
// A password in the URL is refused: URLs end up in shell histories, ps
// listings and logs.
func ParseSMTPURL(s string) (Config, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Config{}, fmt.Errorf("notify: smtp url: not a URL: %w", ErrBadTarget)
	}
	shown := u.Redacted()
	var c Config
	switch u.Scheme {
	case "smtp":
	case "smtps":
		c.ImplicitTLS = true
	default:
		return Config{}, fmt.Errorf("notify: smtp url %q: scheme %q: want smtp:// or smtps://: %w", shown, u.Scheme, ErrBadTarget)
	}
	if _, has := u.User.Password(); has {
		return Config{}, fmt.Errorf("notify: smtp url %q: a password in the URL is not allowed; use %s or password_file: %w",
			shown, EnvSMTPPassword, ErrBadTarget)
	}
	c.Username = u.User.Username()
	c.SMTPHost = u.Hostname()
	if c.SMTPHost == "" {
		return Config{}, fmt.Errorf("notify: smtp url %q: no host: %w", shown, ErrBadTarget)
	}
	if p := u.Port(); p != "" {
		if c.SMTPPort, err = strconv.Atoi(p); err != nil || c.SMTPPort < 1 || c.SMTPPort > 65535 {
			return Config{}, fmt.Errorf("notify: smtp url %q: bad port %q: %w", shown, p, ErrBadTarget)
		}
	}
	for k, v := range u.Query() {
		val := v[len(v)-1]
		switch k {
		case "starttls":
			if c.ImplicitTLS {
				return Config{}, fmt.Errorf("notify: smtp url %q: starttls makes no sense with smtps://: %w", shown, ErrBadTarget)
			}
			switch strings.ToLower(val) {
			case "1", "true", "yes", "require":
				c.StartTLS = StartTLSRequire
			case "0", "false", "no", "off":
				c.StartTLS = StartTLSOff
			case "", "auto":
				c.StartTLS = StartTLSAuto
			default:
				return Config{}, fmt.Errorf("notify: smtp url %q: starttls=%q: want 1, 0 or auto: %w", shown, val, ErrBadTarget)
			}
		case "from":
			if _, err := mail.ParseAddress(val); err != nil {
				return Config{}, fmt.Errorf("notify: smtp url %q: from=%q: %v: %w", shown, val, err, ErrBadTarget)
			}
			c.From = val
		case "password_file":
			c.PasswordFile = val
		default:
			return Config{}, fmt.Errorf("notify: smtp url %q: unknown parameter %q (want starttls, from, password_file): %w", shown, k, ErrBadTarget)
		}
	}
	return c, nil
}

// String renders c as an SMTP URL; it never contains a password.
func (c Config) String() string {
	u := url.URL{Scheme: "smtp", Host: net.JoinHostPort(c.SMTPHost, strconv.Itoa(c.port()))}
	if c.ImplicitTLS {
		u.Scheme = "smtps"
	}
	if c.Username != "" {
		u.User = url.User(c.Username)
	}
	q := url.Values{}
	if !c.ImplicitTLS && c.StartTLS != StartTLSAuto {
		q.Set("starttls", c.StartTLS.String())
	}
	if c.From != "" {
		q.Set("from", c.From)
	}
	if c.PasswordFile != "" {
		q.Set("password_file", c.PasswordFile)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func (c Config) port() int {
	switch {
	case c.SMTPPort != 0:
		return c.SMTPPort
	case c.ImplicitTLS:
		return 465
	}
	return 587
}

func (c Config) from() string {
	if c.From != "" {
		return c.From
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	return "vmvault@" + h
}

// password reads the secret; callers pass it straight to smtp.PlainAuth.
func (c Config) password() (string, error) {
	if c.PasswordFile != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("notify: smtp password file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	if p := os.Getenv(EnvSMTPPassword); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("notify: smtp user %q has no password: set %s or password_file", c.Username, EnvSMTPPassword)
}

// mail sends ev as a plain-text e-mail to addrs.
func (n *Notifier) mail(ctx context.Context, c *Config, addrs []*mail.Address, ev Event) error {
	if c.SMTPHost == "" {
		return fmt.Errorf("notify: smtp: no host: %w", ErrNoSMTP)
	}
	from, err := mail.ParseAddress(c.from())
	if err != nil {
		return fmt.Errorf("notify: smtp: from address %q: %w", c.from(), err)
	}
	msg, err := composeMail(from, addrs, ev)
	if err != nil {
		return err
	}
	where := fmt.Sprintf("notify: smtp %s", net.JoinHostPort(c.SMTPHost, strconv.Itoa(c.port())))
	if err := n.sendMail(ctx, c, from.Address, addrs, msg); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	return nil
}

// sendMail speaks SMTP itself (instead of smtp.SendMail) to honour ctx,
// the timeout and the StartTLS mode.
func (n *Notifier) sendMail(ctx context.Context, c *Config, from string, to []*mail.Address, msg []byte) (err error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout())
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(c.SMTPHost, strconv.Itoa(c.port())))
	if err != nil {
		return err
	}
	defer conn.Close()
	// net/smtp has no context support: bound every read and write by the
	// deadline, and break a blocked one when ctx is cancelled.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
	}()

	tlsConf := c.TLSConfig.Clone()
	if tlsConf == nil {
		tlsConf = &tls.Config{}
	}
	if tlsConf.ServerName == "" {
		tlsConf.ServerName = c.SMTPHost
	}
	if c.ImplicitTLS {
		tc := tls.Client(conn, tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		conn = tc
	}
	cl, err := smtp.NewClient(conn, c.SMTPHost)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.Hello(helloName()); err != nil {
		return err
	}
	if !c.ImplicitTLS && c.StartTLS != StartTLSOff {
		if ok, _ := cl.Extension("STARTTLS"); ok {
			if err := cl.StartTLS(tlsConf); err != nil {
				return fmt.Errorf("starttls: %w", err)
			}
		} else if c.StartTLS == StartTLSRequire {
			return errors.New("server does not offer STARTTLS, and starttls=1 requires it")
		}
	}
	if c.Username != "" {
		if ok, _ := cl.Extension("AUTH"); !ok {
			return fmt.Errorf("server offers no AUTH, but user %q is configured", c.Username)
		}
		pw, err := c.password()
		if err != nil {
			return err
		}
		if err := cl.Auth(smtp.PlainAuth("", c.Username, pw, c.SMTPHost)); err != nil {
			return fmt.Errorf("auth as %q: %w", c.Username, err)
		}
	}
	if err := cl.Mail(from); err != nil {
		return fmt.Errorf("MAIL FROM %s: %w", from, err)
	}
	for _, a := range to {
		if err := cl.Rcpt(a.Address); err != nil {
			return fmt.Errorf("RCPT TO %s: %w", a.Address, err)
		}
	}
	w, err := cl.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	return cl.Quit()
}

// helloName is our name in EHLO; net/smtp would say "localhost".
func helloName() string {
	h, err := os.Hostname()
	if err != nil || h == "" || strings.ContainsAny(h, " \r\n") {
		return "localhost"
	}
	return h
}

// clean keeps a one-line field on one line: control characters (CR, LF,
// ESC ...) from a VM name or an ID become spaces.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// Subject returns the e-mail subject for ev, e.g.
// "vmvault: restore of web01 (2026-11-26T101500Z) succeeded".
func Subject(ev Event) string {
	ev.Event, ev.VM, ev.RP = clean(ev.Event), clean(ev.VM), clean(ev.RP)
	var b strings.Builder
	b.WriteString("vmvault: ")
	b.WriteString(ev.Event)
	if ev.VM != "" {
		b.WriteString(" of " + ev.VM)
	}
	if ev.RP != "" {
		b.WriteString(" (" + ev.RP + ")")
	}
	if ev.Status == StatusOK {
		b.WriteString(" succeeded")
	} else {
		b.WriteString(" failed")
	}
	return b.String()
}

// Body returns the plain-text e-mail body for ev: a one-line verdict, the
// facts aligned in a table, and the error (indented) when there is one.
// Lines end in "\n"; the mail encoder turns them into CRLF.
func Body(ev Event) string {
	ev.Event, ev.VM, ev.RP, ev.Host = clean(ev.Event), clean(ev.VM), clean(ev.RP), clean(ev.Host)
	var b strings.Builder
	verdict := "succeeded"
	if ev.Status != StatusOK {
		verdict = "FAILED"
	}
	what := "Job"
	if r := []rune(ev.Event); len(r) > 0 {
		what = strings.ToUpper(string(r[:1])) + string(r[1:])
	}
	if ev.VM != "" {
		what += " of " + ev.VM
	}
	fmt.Fprintf(&b, "%s %s.\n\n", what, verdict)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%-16s %s\n", k+":", v)
		}
	}
	row("Job", ev.Event)
	row("Status", ev.Status)
	row("VM", ev.VM)
	row("Recovery point", ev.RP)
	const layout = "2006-01-02 15:04:05 MST"
	if !ev.Started.IsZero() {
		row("Started", ev.Started.Format(layout))
	}
	if !ev.Finished.IsZero() {
		f := ev.Finished.Format(layout)
		if !ev.Started.IsZero() && !ev.Finished.Before(ev.Started) {
			f += " (took " + ev.Finished.Sub(ev.Started).Round(time.Second).String() + ")"
		}
		row("Finished", f)
	}
	if ev.Bytes > 0 || ev.Status == StatusOK {
		row("Data", fmt.Sprintf("%s (%d bytes)", humanBytes(ev.Bytes), ev.Bytes))
	}
	row("Backup server", ev.Host)
	if ev.Error != "" {
		b.WriteString("\nError:\n")
		for _, line := range strings.Split(strings.ReplaceAll(ev.Error, "\r\n", "\n"), "\n") {
			b.WriteString("    " + line + "\n")
		}
	}
	fmt.Fprintf(&b, "\n-- \nSent by vmvault %s", Version)
	if ev.Host != "" {
		b.WriteString(" on " + ev.Host)
	}
	b.WriteString(".\n")
	return b.String()
}

func humanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// composeMail builds the RFC 5322 message. Everything that comes from the
// event goes into headers through MIME encoded-words (which also defuses
// CR/LF header injection through a VM name) and into the body through
// quoted-printable.
func composeMail(from *mail.Address, to []*mail.Address, ev Event) ([]byte, error) {
	var h bytes.Buffer
	header := func(k, v string) { fmt.Fprintf(&h, "%s: %s\r\n", k, v) }
	header("From", from.String())
	tos := make([]string, len(to))
	for i, a := range to {
		tos[i] = a.String()
	}
	header("To", strings.Join(tos, ", "))
	header("Subject", mime.QEncoding.Encode("utf-8", Subject(ev)))
	header("Date", time.Now().Format(time.RFC1123Z))
	var id [12]byte
	_, _ = rand.Read(id[:])
	domain := from.Address[strings.LastIndex(from.Address, "@")+1:]
	header("Message-ID", "<"+hex.EncodeToString(id[:])+"@"+domain+">")
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")
	header("Content-Transfer-Encoding", "quoted-printable")
	header("Auto-Submitted", "auto-generated") // RFC 3834: no vacation replies
	header("X-Vmvault-Event", mime.QEncoding.Encode("utf-8", ev.Event))
	header("X-Vmvault-Status", mime.QEncoding.Encode("utf-8", ev.Status))
	h.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&h)
	if _, err := qp.Write([]byte(Body(ev))); err != nil {
		return nil, fmt.Errorf("notify: compose mail: %w", err)
	}
	if err := qp.Close(); err != nil {
		return nil, fmt.Errorf("notify: compose mail: %w", err)
	}
	return h.Bytes(), nil
}
