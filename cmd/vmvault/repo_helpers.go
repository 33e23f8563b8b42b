package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/engine"
)

// repoFlags are the flags every repository command shares.
type repoFlags struct {
	repo         string
	passwordFile string
	// frameCache sizes the chunkstore's frame cache (0 = its default);
	// the mount sets it from --cache-size.
	frameCache int64
}

func (f *repoFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.repo, "repo", "", "repository directory (required)")
	cmd.Flags().StringVar(&f.passwordFile, "password-file", "", "file holding the repository password (else $VMVAULT_PASSWORD)")
}

func (f *repoFlags) check() error {
	if f.repo == "" {
		return errors.New("--repo is required")
	}
	return nil
}

// catalog checks --repo and opens the repository's catalog (no password:
// the catalog holds no secrets and works while another process has the store).
func (f *repoFlags) catalog() (*engine.Catalog, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	return engine.OpenCatalog(f.repo)
}

// password returns the password from --password-file or VMVAULT_PASSWORD
// (never from argv: it would show in ps and shell history), or nil.
func (f *repoFlags) password() ([]byte, error) {
	if f.passwordFile != "" {
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return nil, fmt.Errorf("password file: %w", err)
		}
		pw := strings.TrimRight(string(b), "\r\n")
		if pw == "" {
			return nil, fmt.Errorf("password file %s is empty", f.passwordFile)
		}
		return []byte(pw), nil
	}
	if pw := os.Getenv("VMVAULT_PASSWORD"); pw != "" {
		return []byte(pw), nil
	}
	return nil, nil
}

// open opens the repository (password checked here).
//
// While the repository is mounted (vmvault mount holds it; one process
// at a time) the whole command runs in the mount process instead
// (forward.go): open then returns a *forwardedExit, which main turns into
// the exit code. Inside the mount process, a command run that way
// borrows the mount's open repository.
func (f *repoFlags) open() (*engine.Repo, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	s := serving.Load()
	if s != nil && s.serves(f.repo) {
		return s.repo.Borrow(), nil
	}
	// The socket is tried before the password: the mount needs none from
	// us, and the key derivation would be slow for nothing.
	if s == nil {
		if code, ok := forwardFromCLI(f.repo); ok {
			return nil, &forwardedExit{code}
		}
	}
	pw, err := f.password()
	if err != nil {
		return nil, err
	}
	repo, err := engine.Open(f.repo, engine.OpenOptions{Password: pw, CacheBytes: f.frameCache,
		Logf: func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }})
	if errors.Is(err, chunkstore.ErrLocked) && s == nil {
		// A mount that started after the first look.
		if code, ok := forwardFromCLI(f.repo); ok {
			return nil, &forwardedExit{code}
		}
	}
	return repo, err
}

// signalContext is cancelled by SIGINT/SIGTERM so that an interrupted
// command cleans up (temporary files, no commit) instead of dying midway.
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether f is a terminal (progress bar) or not (plain
// progress lines, for logs and pipes).
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// writerIsTerminal reports whether w is a terminal: the process's own, or
// for a command run by the mount process for another one (forward.go) the
// other's.
func writerIsTerminal(w io.Writer) bool {
	switch v := w.(type) {
	case *os.File:
		return isTerminal(v)
	case interface{ IsTerminal() bool }:
		return v.IsTerminal()
	}
	return false
}

// progress renders byte progress: a bar with rate and ETA on a terminal,
// otherwise one plain line per 10% or per 10 seconds, whichever is first.
type progress struct {
	mu       sync.Mutex
	label    string
	bar      *progressbar.ProgressBar
	w        io.Writer
	start    time.Time
	lastLine time.Time
	lastPct  int
	total    int64
	quiet    bool
	tty      bool
}

// newProgress draws on w, the command's stderr (cmd.ErrOrStderr(): in the
// mount process that is the stream back to the client, not os.Stderr).
func newProgress(w io.Writer, label string, quiet bool) *progress {
	return &progress{label: label, w: w, tty: writerIsTerminal(w), start: time.Now(), lastPct: -1, quiet: quiet}
}

// update is safe for concurrent use.
func (p *progress) update(done, total int64) {
	if p.quiet || total == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		if p.bar == nil || total != p.total {
			if p.bar == nil {
				p.bar = progressbar.NewOptions64(total,
					progressbar.OptionSetWriter(p.w),
					progressbar.OptionSetDescription(p.label),
					progressbar.OptionShowBytes(true),
					progressbar.OptionShowTotalBytes(true),
					progressbar.OptionSetPredictTime(true),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionUseIECUnits(true),
					progressbar.OptionSetWidth(30),
					progressbar.OptionShowCount())
			} else {
				p.bar.ChangeMax64(total)
			}
			p.total = total
		}
		p.bar.Set64(done)
		return
	}
	p.total = total
	pct := 100
	if total > 0 {
		pct = int(done * 100 / total)
	}
	if pct/10 == p.lastPct/10 && time.Since(p.lastLine) < 10*time.Second && done != total {
		return
	}
	if done == total && p.lastPct == 100 {
		return
	}
	p.lastPct, p.lastLine = pct, time.Now()
	el := time.Since(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(done) / el / (1 << 20)
	}
	fmt.Fprintf(p.w, "%s: %d%% %s of %s, %.1f MiB/s\n", p.label, pct, fmtSize(done), fmtSize(total), rate)
}

// logf prints a line without garbling the bar (it is cleared first and
// redrawn on the next update).
func (p *progress) logf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Clear()
	}
	fmt.Fprintf(p.w, format+"\n", args...)
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		p.bar.Finish()
		fmt.Fprintln(p.w)
	}
}

// fmtSize formats a byte count with binary units.
func fmtSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
