package notify

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSMTP is a minimal SMTP server: EHLO/HELO, AUTH PLAIN, MAIL FROM,
// RCPT TO, DATA, RSET, NOOP, QUIT. It records what it receives.
type fakeSMTP struct {
	ln       net.Listener
	auth     bool   // advertise AUTH PLAIN
	password string // accepted password, when auth
	mu       sync.Mutex
	got      []received
	cmds     []string
	lastAuth string
}

type received struct {
	helo, auth, from string
	rcpt             []string
	data             string
}

func startFakeSMTP(t *testing.T, auth bool, password string) *fakeSMTP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeSMTP{ln: ln, auth: auth, password: password}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *fakeSMTP) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

func (s *fakeSMTP) config() *Config {
	return &Config{SMTPHost: "127.0.0.1", SMTPPort: s.port(), From: "vmvault@backup01.example.com"}
}

func (s *fakeSMTP) messages() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.got...)
}

func (s *fakeSMTP) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.cmds...)
}

func (s *fakeSMTP) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(c)
	reply := func(format string, args ...any) { _ = tp.PrintfLine(format, args...) }
	reply("220 fake.example.com ESMTP")
	var cur received
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		s.mu.Lock()
		s.cmds = append(s.cmds, verb)
		s.mu.Unlock()
		switch verb {
		case "EHLO":
			cur.helo = arg
			reply("250-fake.example.com greets %s", arg)
			reply("250-8BITMIME")
			if s.auth {
				reply("250-AUTH PLAIN")
			}
			reply("250 HELP")
		case "HELO":
			cur.helo = arg
			reply("250 fake.example.com")
		case "AUTH":
			mech, resp, _ := strings.Cut(arg, " ")
			dec, err := base64.StdEncoding.DecodeString(resp)
			if !s.auth || mech != "PLAIN" || err != nil {
				reply("504 unsupported")
				continue
			}
			cur.auth = string(dec)
			s.mu.Lock()
			s.lastAuth = cur.auth
			s.mu.Unlock()
			parts := strings.Split(string(dec), "\x00")
			if len(parts) == 3 && parts[2] == s.password {
				reply("235 2.7.0 accepted")
			} else {
				reply("535 5.7.8 authentication credentials invalid")
			}
		case "MAIL":
			cur.from = angle(arg) // "FROM:<a@b> BODY=8BITMIME"
			reply("250 ok")
		case "RCPT":
			cur.rcpt = append(cur.rcpt, angle(arg))
			reply("250 ok")
		case "DATA":
			reply("354 go ahead")
			b, err := io.ReadAll(tp.DotReader())
			if err != nil {
				return
			}
			cur.data = string(b)
			s.mu.Lock()
			s.got = append(s.got, cur)
			s.mu.Unlock()
			cur = received{helo: cur.helo}
			reply("250 queued")
		case "RSET", "NOOP":
			reply("250 ok")
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 not implemented")
		}
	}
}

// angle returns the address between < and > of a MAIL or RCPT argument.
func angle(arg string) string {
	_, a, _ := strings.Cut(arg, "<")
	a, _, _ = strings.Cut(a, ">")
	return a
}

// parseMail splits a received message into decoded headers and body.
func parseMail(t *testing.T, data string) (*mail.Message, string) {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(data))
	if err != nil {
		t.Fatalf("received message does not parse: %v\n%s", err, data)
	}
	if cte := m.Header.Get("Content-Transfer-Encoding"); cte != "quoted-printable" {
		t.Fatalf("Content-Transfer-Encoding %q", cte)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil {
		t.Fatal(err)
	}
	return m, string(body)
}

func restoreEvent() Event {
	start := time.Date(2026, 11, 26, 10, 15, 0, 0, time.UTC)
	return Event{
		Event: "restore", Status: StatusOK, VM: "web01", RP: "2026-11-26T101500Z",
		Started: start, Finished: start.Add(2*time.Minute + 3*time.Second),
		Bytes: 1288490188, Host: "backup01",
	}
}

func TestMailSuccess(t *testing.T) {
	srv := startFakeSMTP(t, false, "")
	n := &Notifier{SMTP: srv.config(), Timeout: 5 * time.Second}
	if err := n.Notify(context.Background(), "mailto:admin@example.com, Ops Team <ops@example.com>", restoreEvent()); err != nil {
		t.Fatal(err)
	}
	msgs := srv.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages received, want 1", len(msgs))
	}
	got := msgs[0]
	if got.from != "vmvault@backup01.example.com" || strings.Join(got.rcpt, " ") != "admin@example.com ops@example.com" {
		t.Errorf("envelope: from %q rcpt %q", got.from, got.rcpt)
	}
	if got.helo == "" || got.auth != "" {
		t.Errorf("helo %q auth %q", got.helo, got.auth)
	}
	m, body := parseMail(t, got.data)
	subj, err := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "vmvault: restore of web01 (2026-11-26T101500Z) succeeded"; subj != want {
		t.Errorf("Subject %q, want %q", subj, want)
	}
	for k, want := range map[string]string{
		"From":             "<vmvault@backup01.example.com>",
		"To":               `<admin@example.com>, "Ops Team" <ops@example.com>`,
		"Content-Type":     "text/plain; charset=utf-8",
		"Auto-Submitted":   "auto-generated",
		"X-Vmvault-Status": "ok",
		"MIME-Version":     "1.0",
	} {
		if v := m.Header.Get(k); v != want {
			t.Errorf("header %s: %q, want %q", k, v, want)
		}
	}
	if d, err := m.Header.Date(); err != nil || time.Since(d) > time.Minute {
		t.Errorf("Date header %q: %v", m.Header.Get("Date"), err)
	}
	if id := m.Header.Get("Message-ID"); !strings.HasSuffix(id, "@backup01.example.com>") {
		t.Errorf("Message-ID %q", id)
	}
	// Lines end in \n here because textproto's DotReader turns CRLF into
	// LF; TestComposeMailCRLF checks the wire format.
	for _, want := range []string{
		"Restore of web01 succeeded.\n",
		"Recovery point:  2026-11-26T101500Z\n",
		"Started:         2026-11-26 10:15:00 UTC\n",
		"Finished:        2026-11-26 10:17:03 UTC (took 2m3s)\n",
		"Data:            1.2 GiB (1288490188 bytes)\n",
		"Backup server:   backup01\n",
		"Sent by vmvault dev on backup01.",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("body lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "Error") {
		t.Errorf("successful job's mail mentions an error:\n%s", body)
	}
}

func TestMailFailureWithAuth(t *testing.T) {
	srv := startFakeSMTP(t, true, "s3cret-pw")
	cfg := srv.config()
	cfg.Username = "backup-bot"
	t.Setenv(EnvSMTPPassword, "s3cret-pw")
	ev := restoreEvent()
	ev.Status = StatusFailed
	ev.Bytes = 0
	ev.Error = "chunkstore: read pack 3f2a: shard 2 missing\nand parity exhausted"
	// A VM name trying to inject a header must stay inside the subject.
	ev.VM = "web01\r\nBcc: evil@example.net"
	n := &Notifier{SMTP: cfg, Timeout: 5 * time.Second}
	if err := n.Notify(context.Background(), "mailto:admin@example.com", ev); err != nil {
		t.Fatal(err)
	}
	msgs := srv.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages", len(msgs))
	}
	if msgs[0].auth != "\x00backup-bot\x00s3cret-pw" {
		t.Errorf("AUTH PLAIN %q", msgs[0].auth)
	}
	if strings.Join(msgs[0].rcpt, " ") != "admin@example.com" {
		t.Errorf("rcpt %q: header injection reached the envelope", msgs[0].rcpt)
	}
	m, body := parseMail(t, msgs[0].data)
	if m.Header.Get("Bcc") != "" {
		t.Error("header injection through the VM name")
	}
	subj, _ := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
	if !strings.HasPrefix(subj, "vmvault: restore of web01") || !strings.HasSuffix(subj, "(2026-11-26T101500Z) failed") {
		t.Errorf("Subject %q", subj)
	}
	for _, want := range []string{
		"FAILED.\n", "Status:          failed\n",
		"Error:\n    chunkstore: read pack 3f2a: shard 2 missing\n    and parity exhausted\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("body lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "Data:") {
		t.Errorf("failed job with no bytes shows a Data line:\n%s", body)
	}
}

func TestMailAuthErrorsDoNotLeakPassword(t *testing.T) {
	srv := startFakeSMTP(t, true, "the-right-one")
	cfg := srv.config()
	cfg.Username = "backup-bot"
	pwFile := filepath.Join(t.TempDir(), "smtp-password")
	if err := os.WriteFile(pwFile, []byte("wrong-pw-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.PasswordFile = pwFile
	t.Setenv(EnvSMTPPassword, "env-pw-not-used")
	n := &Notifier{SMTP: cfg, Timeout: 5 * time.Second}
	err := n.Notify(context.Background(), "mailto:admin@example.com", restoreEvent())
	if err == nil {
		t.Fatal("wrong password accepted")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "notify: smtp 127.0.0.1:") || !strings.Contains(msg, `auth as "backup-bot"`) || !strings.Contains(msg, "535") {
		t.Errorf("error %q", msg)
	}
	if strings.Contains(msg, "wrong-pw") || strings.Contains(fmtAll(cfg), "wrong-pw") {
		t.Errorf("password leaked: %q", msg)
	}
	// The password file wins over the environment, trailing newline stripped.
	if a := srv.messages(); len(a) != 0 {
		t.Errorf("message sent despite failed auth")
	}
	if got := srv.authSeen(); got != "\x00backup-bot\x00wrong-pw-123" {
		t.Errorf("AUTH PLAIN %q, want the password file's content", got)
	}
	// No password anywhere: clear error, nothing sent.
	cfg.PasswordFile = ""
	t.Setenv(EnvSMTPPassword, "")
	err = n.Notify(context.Background(), "mailto:admin@example.com", restoreEvent())
	if err == nil || !strings.Contains(err.Error(), "has no password: set VMVAULT_SMTP_PASSWORD or password_file") {
		t.Errorf("no password: %v", err)
	}
}

// authSeen is the last AUTH payload, from any connection.
func (s *fakeSMTP) authSeen() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastAuth
}

func fmtAll(c *Config) string { return c.String() }

func TestStartTLSRequired(t *testing.T) {
	srv := startFakeSMTP(t, false, "")
	cfg := srv.config()
	cfg.StartTLS = StartTLSRequire
	n := &Notifier{SMTP: cfg, Timeout: 5 * time.Second}
	err := n.Notify(context.Background(), "mailto:admin@example.com", restoreEvent())
	if err == nil || !strings.Contains(err.Error(), "does not offer STARTTLS") {
		t.Fatalf("err %v, want a STARTTLS error", err)
	}
	for _, c := range srv.commands() {
		if c == "MAIL" {
			t.Error("mail sent without the required STARTTLS")
		}
	}
}

func TestMailFromEnvironment(t *testing.T) {
	srv := startFakeSMTP(t, false, "")
	t.Setenv(EnvSMTPURL, "smtp://127.0.0.1:"+strconv.Itoa(srv.port())+"?starttls=0&from=alerts@example.com")
	if err := Notify(context.Background(), "mailto:admin@example.com", restoreEvent()); err != nil {
		t.Fatal(err)
	}
	if m := srv.messages(); len(m) != 1 || m[0].from != "alerts@example.com" {
		t.Fatalf("messages %+v", m)
	}
	t.Setenv(EnvSMTPURL, "")
	err := Notify(context.Background(), "mailto:admin@example.com", restoreEvent())
	if !errors.Is(err, ErrNoSMTP) || !strings.Contains(err.Error(), "set VMVAULT_SMTP_URL") {
		t.Errorf("no SMTP configured: %v", err)
	}
}

func TestMailServerGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	n := &Notifier{SMTP: &Config{SMTPHost: "127.0.0.1", SMTPPort: port}, Timeout: 5 * time.Second}
	err = n.Notify(context.Background(), "mailto:admin@example.com", restoreEvent())
	if err == nil || !strings.HasPrefix(err.Error(), "notify: smtp 127.0.0.1:"+strconv.Itoa(port)+": ") {
		t.Errorf("err %v", err)
	}
}

func TestMailContextCancelled(t *testing.T) {
	// A server that accepts and then says nothing: the greeting read must
	// give up when the context is cancelled, not hang.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, bufio.NewReader(c))
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	n := &Notifier{SMTP: &Config{SMTPHost: "127.0.0.1", SMTPPort: ln.Addr().(*net.TCPAddr).Port}}
	start := time.Now()
	err = n.Notify(ctx, "mailto:admin@example.com", restoreEvent())
	if !errors.Is(err, context.Canceled) || time.Since(start) > 3*time.Second {
		t.Errorf("err %v after %v, want context.Canceled quickly", err, time.Since(start))
	}
}

func TestParseSMTPURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Config
	}{
		{"smtp://user@mail.example.com:587?starttls=1", Config{SMTPHost: "mail.example.com", SMTPPort: 587, Username: "user", StartTLS: StartTLSRequire}},
		{"smtp://relay.lan?starttls=0&from=vmvault@example.com", Config{SMTPHost: "relay.lan", From: "vmvault@example.com", StartTLS: StartTLSOff}},
		{"smtps://bot%40example.com@mail.example.com?password_file=/etc/vmvault/smtp", Config{SMTPHost: "mail.example.com", Username: "bot@example.com", PasswordFile: "/etc/vmvault/smtp", ImplicitTLS: true}},
		{"smtp://[::1]:25?starttls=auto", Config{SMTPHost: "::1", SMTPPort: 25}},
	} {
		got, err := ParseSMTPURL(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSMTPURL(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		// String renders a URL that parses back to the same config (with
		// the default port made explicit).
		back, err := ParseSMTPURL(got.String())
		want := tc.want
		want.SMTPPort = got.port()
		if err != nil || back != want {
			t.Errorf("round trip %q -> %q -> %+v, %v", tc.in, got.String(), back, err)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"smtp://user:hunter2@mail.example.com", "a password in the URL is not allowed; use VMVAULT_SMTP_PASSWORD or password_file"},
		{"http://mail.example.com", `scheme "http": want smtp:// or smtps://`},
		{"smtp://", "no host"},
		{"smtp://mail.example.com:99999", `bad port "99999"`},
		{"smtp://mail.example.com?startls=1", `unknown parameter "startls"`},
		{"smtp://mail.example.com?starttls=maybe", `starttls="maybe": want 1, 0 or auto`},
		{"smtps://mail.example.com?starttls=1", "starttls makes no sense with smtps://"},
		{"smtp://mail.example.com?from=nobody", `from="nobody"`},
	} {
		_, err := ParseSMTPURL(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrBadTarget) || !strings.HasPrefix(err.Error(), "notify: smtp url") {
			t.Errorf("ParseSMTPURL(%q): %v, want error containing %q", tc.in, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("password echoed: %v", err)
		}
	}
}

func TestComposeMailCRLF(t *testing.T) {
	ev := restoreEvent()
	ev.Status, ev.Error = StatusFailed, "line one\nline two ünïcödé "+strings.Repeat("x", 120)
	msg, err := composeMail(&mail.Address{Address: "a@example.com"}, []*mail.Address{{Address: "b@example.com"}}, ev)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(msg), "\r\n") {
		if strings.ContainsAny(line, "\r\n") {
			t.Fatalf("line %d has a bare CR or LF: %q", i, line)
		}
		if len(line) > 78 {
			t.Errorf("line %d longer than 78 octets: %q", i, line)
		}
		for _, c := range []byte(line) {
			if c >= 0x80 {
				t.Fatalf("line %d is not 7-bit: %q", i, line)
			}
		}
	}
	_, body := parseMail(t, string(msg))
	if !strings.Contains(body, "    line two ünïcödé "+strings.Repeat("x", 120)+"\r\n") {
		t.Errorf("long non-ASCII error line did not survive encoding:\n%s", body)
	}
}
