package main

// Commands run through the mount process ("forwarding").
//
// While `vmvault mount` runs it holds the repository: the chunkstore takes
// an exclusive lock and Badger is single-process, so another vmvault
// process cannot open it, and a nightly backup would fail for as long as
// somebody browses the mount. The mount therefore listens on a unix
// socket, <repo>/vmvault.sock (mode 0600, removed at exit), and a command
// that needs the repository while it is mounted sends its arguments there;
// the mount process runs the same cobra command in-process against the
// engine it already has open (a borrowed handle: the command's Close does
// not close it) and streams the output back; the client exits with the
// command's exit code.
//
// Authentication is the socket's mode and, on Linux, the peer's uid
// (SO_PEERCRED): only the mount's own uid, or root, is served (and a
// non-root client only talks to a mount of its own uid or root's). No
// password crosses the socket: the mount process holds the key already.
//
// What runs (forwardPolicy): backup, restore, check, forget, rp list/show,
// jobs, files ls/cp. Writers (backup, restore --to original, forget, and
// check, which would count a backup's pack in flight as a problem) run one
// at a time; the others concurrently. Commands that would delete data
// under the mount (prune, check --repair) and anything else are refused
// with one line. Host paths in the arguments are made absolute against
// the client's working directory (absArgs), since the mount process has
// its own.
//
// Only commands that open the chunk store are forwarded (repoFlags.open);
// catalog-only ones (rp list, jobs, forget, group) work beside a mount by
// themselves. A forwarded backup's hooks run in the mount process, with
// its environment and working directory.
//
// Protocol, version 1. Every message is a frame:
//
//	type     1 byte
//	length   4 bytes, big-endian, at most maxFrame (checked before allocating)
//	payload  length bytes
//
//	server -> client  'H' hello     JSON fwdHello, sent on accept (Error set: refused)
//	client -> server  'Q' request   JSON fwdRequest: arguments, working directory,
//	                                whether stdout and stderr are terminals
//	server -> client  'S' started   (empty) the command runs; the client says so
//	server -> client  '1' stdout, '2' stderr: output bytes, in order
//	server -> client  'X' exit      4 bytes, big-endian exit code; the last frame
//	client -> server  'C' cancel    (empty) Ctrl-C. End of file or any read error
//	                                on the connection cancels the command as well.
//
// A refused command gets no 'S': one stderr line, then exit 1.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vmvault/vmvault/engine"
)

const (
	forwardSockName = "vmvault.sock"
	forwardVersion  = 1
	// maxFrame bounds every frame; output is sent in streamChunk pieces.
	maxFrame    = 1 << 20
	streamChunk = 64 << 10
	// forwardStopWait is how long the mount waits at exit for forwarded
	// commands to stop after cancelling them, before closing the store
	// under them.
	forwardStopWait = 30 * time.Second
)

// Frame types.
const (
	frameHello   = 'H'
	frameRequest = 'Q'
	frameStart   = 'S'
	frameStdout  = '1'
	frameStderr  = '2'
	frameExit    = 'X'
	frameCancel  = 'C'
)

type fwdHello struct {
	Version    int    `json:"version"`
	PID        int    `json:"pid"`
	Mountpoint string `json:"mountpoint"`
	Error      string `json:"error,omitempty"`
}

type fwdRequest struct {
	Version int `json:"version"`
	// Args are the command line without the program name, host paths
	// made absolute.
	Args      []string `json:"args"`
	Cwd       string   `json:"cwd"`
	StdoutTTY bool     `json:"stdout_tty"`
	StderrTTY bool     `json:"stderr_tty"`
}

// writeFrame writes one frame in a single Write, so that frames written
// under frameSender's lock never interleave.
func writeFrame(w io.Writer, typ byte, p []byte) error {
	if len(p) > maxFrame {
		return fmt.Errorf("forward: frame of %d bytes exceeds %d", len(p), maxFrame)
	}
	buf := make([]byte, 5+len(p))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(p)))
	copy(buf[5:], p)
	_, err := w.Write(buf)
	return err
}

// readFrame reads one frame of at most limit payload bytes. The length is
// checked before anything is allocated: the peer is not trusted. A clean
// end of stream before a frame is io.EOF.
func readFrame(r io.Reader, limit int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if uint64(n) > uint64(limit) {
		return 0, nil, fmt.Errorf("forward: frame of %d bytes exceeds the limit of %d", n, limit)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, fmt.Errorf("forward: short frame: %w", io.ErrUnexpectedEOF)
	}
	return hdr[0], p, nil
}

// frameSender serializes frames from several goroutines (a command's
// stdout and stderr, restore's parallel workers, the exit frame). After
// the first write error every send fails fast with it.
type frameSender struct {
	mu  sync.Mutex
	w   io.Writer
	err error
}

func (s *frameSender) send(typ byte, p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.err = writeFrame(s.w, typ, p)
	return s.err
}

func (s *frameSender) sendJSON(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("forward: %w", err)
	}
	return s.send(typ, b)
}

// streamWriter is a forwarded command's stdout or stderr.
type streamWriter struct {
	fs  *frameSender
	typ byte
	tty bool
}

func (w *streamWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := min(len(p), streamChunk)
		if err := w.fs.send(w.typ, p[:c]); err != nil {
			return n, err
		}
		n, p = n+c, p[c:]
	}
	return n, nil
}

// IsTerminal reports whether the client's stream is a terminal, so that
// progress is drawn as a bar there (writerIsTerminal).
func (w *streamWriter) IsTerminal() bool { return w.tty }

// ---- server (in vmvault mount) ----

// serving is this process's repository server (vmvault mount), else nil.
// repoFlags.open lends its repository to the commands it runs.
var serving atomic.Pointer[repoServer]

type repoServer struct {
	repo       *engine.Repo
	dir        string // absolute repository directory
	dirInfo    os.FileInfo
	mountpoint string
	sock       string
	sockInfo   os.FileInfo
	ln         *net.UnixListener
	logf       func(format string, args ...any)

	// serial is held by the forwarded command that writes; holder names it
	// for the "waiting for" line of the next one.
	serial   chan struct{}
	holderMu sync.Mutex
	holder   string

	ctx    context.Context // cancelled by Close: every forwarded command
	cancel context.CancelFunc
	conns  sync.WaitGroup
	loop   sync.WaitGroup
}

// startRepoServer serves repo (opened from repoDir, mounted at mountpoint)
// to other vmvault processes on <repoDir>/vmvault.sock until Close. It
// returns nil, nil where forwarding is not supported (Windows: a socket
// file's mode protects nothing there).
func startRepoServer(repo *engine.Repo, repoDir, mountpoint string, logf func(string, ...any)) (*repoServer, error) {
	if !forwardSupported {
		return nil, nil
	}
	dir, err := filepath.Abs(repoDir)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	dirInfo, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	sock := filepath.Join(dir, forwardSockName)
	if err := removeStaleSocket(sock); err != nil {
		return nil, err
	}
	// Bind inside a fresh 0700 directory, set the mode, then rename into
	// place: the socket is never reachable with the umask's mode.
	tmp, err := os.MkdirTemp(dir, ".vmvault-sock-")
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	defer os.RemoveAll(tmp)
	tmpSock := filepath.Join(tmp, "s")
	addr, release, err := sockAddr(tmpSock)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	release()
	if err != nil {
		return nil, fmt.Errorf("forward: listen on %s: %w", sock, err)
	}
	// The bound name is gone after the rename; Close removes the socket
	// itself (only if it is still ours).
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*repoServer, error) {
		ln.Close()
		return nil, fmt.Errorf("forward: %w", err)
	}
	if err := os.Chmod(tmpSock, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmpSock, sock); err != nil {
		return fail(err)
	}
	sockInfo, err := os.Lstat(sock)
	if err != nil {
		return fail(err)
	}
	mp, err := filepath.Abs(mountpoint)
	if err != nil {
		mp = mountpoint
	}
	s := &repoServer{repo: repo, dir: dir, dirInfo: dirInfo, mountpoint: mp, sock: sock, sockInfo: sockInfo,
		ln: ln, logf: logf, serial: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	serving.Store(s)
	s.loop.Add(1)
	go s.acceptLoop()
	return s, nil
}

// removeStaleSocket removes the socket a killed mount left behind. One
// that answers is not stale, and a file that is not a socket is not ours.
func removeStaleSocket(sock string) error {
	fi, err := os.Lstat(sock)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("forward: %w", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("forward: %s exists and is not a socket", sock)
	}
	if c, err := dialSock(sock, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("forward: another process answers on %s", sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("forward: remove stale %s: %w", sock, err)
	}
	return nil
}

func dialSock(path string, timeout time.Duration) (*net.UnixConn, error) {
	addr, release, err := sockAddr(path)
	if err != nil {
		return nil, err
	}
	defer release()
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("unix", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// serves reports whether dir is the repository this server holds.
func (s *repoServer) serves(dir string) bool {
	fi, err := os.Stat(dir)
	return err == nil && os.SameFile(fi, s.dirInfo)
}

// Close stops serving: the socket goes first (new clients then open the
// repository themselves once the mount has released it), then the running
// commands are cancelled and awaited, for at most forwardStopWait.
func (s *repoServer) Close() {
	if s == nil {
		return
	}
	s.ln.Close()
	if fi, err := os.Lstat(s.sock); err == nil && os.SameFile(fi, s.sockInfo) {
		os.Remove(s.sock)
	}
	s.loop.Wait()
	s.cancel()
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(forwardStopWait):
		s.logf("forwarded commands did not stop within %v; closing the repository under them", forwardStopWait)
	}
	serving.CompareAndSwap(s, nil)
}

func (s *repoServer) acceptLoop() {
	defer s.loop.Done()
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.logf("forward: accept: %v", err)
			time.Sleep(100 * time.Millisecond) // EMFILE and the like: do not spin
			continue
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			s.handle(c)
		}()
	}
}

// handle serves one connection: hello, request, the command, exit.
func (s *repoServer) handle(c *net.UnixConn) {
	defer c.Close()
	fs := &frameSender{w: c}
	pid, err := checkPeer(c, true)
	if err != nil {
		s.logf("refused a command from another user: %v", err)
		fs.sendJSON(frameHello, fwdHello{Version: forwardVersion, Error: "the mount process serves only its own user and root"})
		return
	}
	if fs.sendJSON(frameHello, fwdHello{Version: forwardVersion, PID: os.Getpid(), Mountpoint: s.mountpoint}) != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	typ, p, err := readFrame(c, maxFrame)
	var req fwdRequest
	if err == nil && typ != frameRequest {
		err = fmt.Errorf("forward: frame %q where a request belongs", typ)
	}
	if err == nil {
		err = json.Unmarshal(p, &req)
	}
	if err != nil {
		s.logf("forward: bad request from pid %d: %v", pid, err)
		return
	}
	c.SetReadDeadline(time.Time{})
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	go func() {
		// The client sends nothing but a cancel; that, end of file (the
		// client died) or anything unexpected ends the command.
		readFrame(c, 0)
		cancel()
	}()
	what, code := s.run(ctx, fs, req)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(int32(code)))
	fs.send(frameExit, b[:])
	s.logf("ran %s for pid %d: exit %d", what, pid, code)
}

// refusal is a forwarded command the mount will not run.
type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

// run runs one forwarded command line and returns what it was (for the
// log: never the arguments, which may hold webhook tokens) and its exit
// code.
func (s *repoServer) run(ctx context.Context, fs *frameSender, req fwdRequest) (what string, code int) {
	stdout := &streamWriter{fs: fs, typ: frameStdout, tty: req.StdoutTTY}
	stderr := &streamWriter{fs: fs, typ: frameStderr, tty: req.StderrTTY}
	what = "a command"
	if req.Version != forwardVersion {
		fmt.Fprintf(stderr, "vmvault: the mount process (pid %d) speaks forwarding protocol %d, this vmvault %d; use the same vmvault binary\n", os.Getpid(), forwardVersion, req.Version)
		return what, 1
	}
	if !filepath.IsAbs(req.Cwd) {
		fmt.Fprintf(stderr, "vmvault: forward: working directory %q is not absolute\n", req.Cwd)
		return what, 1
	}
	root := newRootCmd()
	// Again here, not only in the client: relative paths must never be
	// taken relative to the mount process's directory.
	root.SetArgs(absArgs(newRootCmd(), req.Args, req.Cwd))
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetIn(strings.NewReader(""))
	var release func()
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		what = cmd.CommandPath()
		serial, deny := forwardPolicy(cmd)
		switch {
		case deny == "mount":
			return &refusal{fmt.Sprintf("repository is already mounted by pid %d at %s", os.Getpid(), s.mountpoint)}
		case deny != "":
			return &refusal{fmt.Sprintf("repository is mounted by pid %d at %s; unmount it before %s", os.Getpid(), s.mountpoint, deny)}
		}
		// The client reached this repository's socket, whatever path it
		// named it by (relative, through a symlink).
		if f := cmd.Flags().Lookup("repo"); f != nil {
			if err := f.Value.Set(s.dir); err != nil {
				return err
			}
		}
		if err := fs.send(frameStart, nil); err != nil {
			return err
		}
		if serial {
			r, err := s.acquire(ctx, stderr, strings.TrimPrefix(what, root.Name()+" "))
			if err != nil {
				return err
			}
			// A backup's ingest buffers would otherwise make the GC run
			// without pause against the mount's memory limit.
			if l := mountMemoryLimit.Load(); l > 0 {
				debug.SetMemoryLimit(l + 768<<20)
				release = func() { debug.SetMemoryLimit(l); r() }
			} else {
				release = r
			}
		}
		return nil
	}
	defer func() {
		if release != nil {
			release()
		}
		if p := recover(); p != nil {
			s.logf("panic in forwarded %s: %v\n%s", what, p, debug.Stack())
			fmt.Fprintf(stderr, "vmvault: internal error in the mount process: %v\n", p)
			code = 1
		}
	}()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "vmvault: "+err.Error())
		return what, 1
	}
	return what, 0
}

// acquire takes the writer slot, saying on the client's stderr when it has
// to wait; a cancelled command stops waiting.
func (s *repoServer) acquire(ctx context.Context, stderr io.Writer, what string) (func(), error) {
	select {
	case s.serial <- struct{}{}:
	default:
		s.holderMu.Lock()
		h := s.holder
		s.holderMu.Unlock()
		if h == "" {
			h = "command" // it has the slot but has not named itself yet
		}
		fmt.Fprintf(stderr, "vmvault: waiting for the %s running through the mount to finish\n", h)
		select {
		case s.serial <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.holderMu.Lock()
	s.holder = what
	s.holderMu.Unlock()
	return func() { <-s.serial }, nil
}

// forwardPolicy says how the mount process runs a forwarded command:
// refused (deny names what to unmount before), one writer at a time
// (serial), or concurrently with everything else.
func forwardPolicy(cmd *cobra.Command) (serial bool, deny string) {
	path := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
	changed := func(name string) bool {
		f := cmd.Flags().Lookup(name)
		return f != nil && f.Changed
	}
	on := func(name string) bool {
		f := cmd.Flags().Lookup(name)
		return f != nil && f.Changed && f.Value.String() == "true"
	}
	// Profiles would be of the whole mount process, and the profiler is
	// process-wide state.
	for _, p := range []string{"cpuprofile", "blockprofile", "mutexprofile", "memprofile", "trace"} {
		if changed(p) {
			return false, path + " --" + p
		}
	}
	switch path {
	case "backup":
		return true, ""
	case "restore":
		to := cmd.Flags().Lookup("to")
		return to != nil && to.Value.String() == engine.RestoreOriginal, ""
	case "check":
		// Repair rewrites packs under the mount's readers. A plain check
		// still waits for a backup: it counts a pack being written as
		// pending, a problem.
		if on("repair") {
			return false, "check --repair"
		}
		return true, ""
	case "forget":
		if on("prune") {
			return false, "forget --prune"
		}
		return true, ""
	case "rp list", "rp show", "jobs", "files ls", "files cp":
		return false, ""
	case "schedule run":
		// One pass (--once) is a series of backups and forgets; the
		// service loop belongs in its own process, which forwards each
		// pass here while the repository is mounted.
		switch {
		case on("prune"):
			return false, "schedule run --prune"
		case on("dry-run"):
			return false, ""
		case on("once"):
			return true, ""
		}
		return false, "schedule run without --once"
	}
	// prune, rp delete, mount, and whatever is added later: refused until
	// someone decides it is safe under a mount.
	return false, path
}

// absArgs returns args (a command line without the program name) with the
// host paths made absolute against cwd: the mount process runs the
// command in its own working directory. Unknown commands are returned
// as they are (the server reports them).
func absArgs(root *cobra.Command, args []string, cwd string) []string {
	cmd, _, err := root.Find(args)
	if err != nil || cmd == root {
		return args
	}
	cmd.InitDefaultHelpFlag()
	cmd.InheritedFlags() // merges the parents' persistent flags into Flags()
	flags := cmd.Flags()
	path := strings.TrimPrefix(cmd.CommandPath(), root.Name()+" ")
	depth := len(strings.Fields(path)) // command names among the positionals
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(cwd, p)
	}
	out := append([]string(nil), args...)
	pos := 0
	positional := func(i int) {
		if n := pos - depth; n >= 0 && isPathArg(path, n) {
			out[i] = abs(out[i])
		}
		pos++
	}
	for i := 0; i < len(out); i++ {
		a := out[i]
		switch {
		case a == "--":
			for i++; i < len(out); i++ {
				positional(i)
			}
		case strings.HasPrefix(a, "--"):
			name, val, inline := strings.Cut(a[2:], "=")
			f := flags.Lookup(name)
			switch {
			case inline:
				if isPathFlag(path, name, val) {
					out[i] = "--" + name + "=" + abs(val)
				}
			case f != nil && f.NoOptDefVal != "":
				// a boolean: no value follows
			case i+1 < len(out):
				// a value follows (unknown flags too, as cobra assumes)
				i++
				if isPathFlag(path, name, out[i]) {
					out[i] = abs(out[i])
				}
			}
		case strings.HasPrefix(a, "-") && len(a) > 1:
			i += shorthandValues(flags, a)
		default:
			positional(i)
		}
	}
	return out
}

// shorthandValues returns 1 when the shorthand cluster a ("-q", "-qn",
// "-n5") takes its value from the next argument, else 0. No path flag has
// a shorthand; this only keeps the positions right.
func shorthandValues(flags *pflag.FlagSet, a string) int {
	for k := 1; k < len(a); k++ {
		f := flags.ShorthandLookup(a[k : k+1])
		switch {
		case f == nil:
			// pflag will reject it; cobra's command search assumes a
			// lone unknown "-x" takes the next argument.
			if len(a) == 2 {
				return 1
			}
			return 0
		case f.NoOptDefVal != "":
			// a boolean: the next letter is another flag
		case k+1 < len(a):
			return 0 // the value is the rest of this argument
		default:
			return 1
		}
	}
	return 0
}

// isPathFlag reports whether flag name of command path holds a host path.
func isPathFlag(path, name, val string) bool {
	switch name {
	case "repo", "password-file", "cpuprofile", "blockprofile", "mutexprofile", "memprofile", "trace":
		return true
	case "to":
		return path == "restore" && val != engine.RestoreOriginal
	}
	return false
}

// isPathArg reports whether positional argument n of command path is a
// host path.
func isPathArg(path string, n int) bool {
	switch path {
	case "backup":
		return true // every source
	case "files cp":
		return n == 1 // DEST; PATH is in the recovery tree
	}
	return false
}

// ---- client (any repository command) ----

// forwardedExit ends a command that the mount process ran: main exits
// with code and prints nothing more (the output came from the mount).
type forwardedExit struct{ code int }

func (e *forwardedExit) Error() string {
	return fmt.Sprintf("ran through the mount process: exit %d", e.code)
}

// forwardIO is the client's side of the streams.
type forwardIO struct {
	stdout, stderr       io.Writer
	stdoutTTY, stderrTTY bool
	// signals: the first cancels the command (the client still prints
	// what it says while stopping), the second gives up at once.
	signals <-chan os.Signal
}

// hasForwardSocket reports whether repoDir has a socket where a mount
// would serve; cheap, for every repository open.
func hasForwardSocket(repoDir string) bool {
	fi, err := os.Lstat(filepath.Join(repoDir, forwardSockName))
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// forwardFromCLI runs this process's command line through the mount
// process serving repoDir, if one answers (ok).
func forwardFromCLI(repoDir string) (code int, ok bool) {
	if !hasForwardSocket(repoDir) {
		return 0, false
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	return forwardToMount(repoDir, os.Args[1:], forwardIO{stdout: os.Stdout, stderr: os.Stderr,
		stdoutTTY: isTerminal(os.Stdout), stderrTTY: isTerminal(os.Stderr), signals: sig})
}

// forwardToMount sends args to the mount process serving repoDir and
// relays its output. ok is false when no trusted vmvault mount answers
// (no socket, a stale one, another uid): the caller then opens the
// repository itself. Once a mount has answered, ok is true whatever
// happens, and code is the exit code to leave with.
func forwardToMount(repoDir string, args []string, fio forwardIO) (code int, ok bool) {
	if !hasForwardSocket(repoDir) {
		return 0, false
	}
	c, err := dialSock(filepath.Join(repoDir, forwardSockName), 2*time.Second)
	if err != nil {
		return 0, false // a stale socket of a killed mount
	}
	defer c.Close()
	if _, err := checkPeer(c, false); err != nil {
		return 0, false // a socket of another user: not ours to send commands to
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	typ, p, err := readFrame(c, maxFrame)
	var h fwdHello
	if err != nil || typ != frameHello || json.Unmarshal(p, &h) != nil {
		return 0, false
	}
	c.SetDeadline(time.Time{})
	if h.Error != "" {
		fmt.Fprintf(fio.stderr, "vmvault: repository is mounted and %s\n", h.Error)
		return 1, true
	}
	if h.Version != forwardVersion {
		fmt.Fprintf(fio.stderr, "vmvault: repository is mounted by pid %d at %s, whose vmvault speaks forwarding protocol %d (this one %d); use the same vmvault binary\n",
			h.PID, h.Mountpoint, h.Version, forwardVersion)
		return 1, true
	}
	cwd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(fio.stderr, "vmvault: %v\n", err)
		return 1, true
	}
	fs := &frameSender{w: c}
	req := fwdRequest{Version: forwardVersion, Args: absArgs(newRootCmd(), args, cwd), Cwd: cwd,
		StdoutTTY: fio.stdoutTTY, StderrTTY: fio.stderrTTY}
	if err := fs.sendJSON(frameRequest, req); err != nil {
		fmt.Fprintf(fio.stderr, "vmvault: repository is mounted by pid %d at %s; sending the command to it: %v\n", h.PID, h.Mountpoint, err)
		return 1, true
	}
	var gaveUp atomic.Bool
	done := make(chan struct{})
	defer close(done)
	go func() {
		for n := 0; ; n++ {
			select {
			case <-fio.signals:
				if n == 0 {
					fs.send(frameCancel, nil)
					continue
				}
				gaveUp.Store(true)
				c.Close()
				return
			case <-done:
				return
			}
		}
	}()
	for {
		typ, p, err := readFrame(c, maxFrame)
		if err != nil {
			if gaveUp.Load() {
				return 130, true
			}
			fmt.Fprintf(fio.stderr, "vmvault: lost the mount process (pid %d) while it ran the command: %v\n", h.PID, err)
			return 1, true
		}
		switch typ {
		case frameStart:
			fmt.Fprintf(fio.stderr, "vmvault: repository is mounted by pid %d at %s; running through it\n", h.PID, h.Mountpoint)
		case frameStdout:
			fio.stdout.Write(p)
		case frameStderr:
			fio.stderr.Write(p)
		case frameExit:
			if len(p) != 4 {
				fmt.Fprintf(fio.stderr, "vmvault: bad exit frame from the mount process (pid %d)\n", h.PID)
				return 1, true
			}
			return int(int32(binary.BigEndian.Uint32(p))), true
		default:
			fmt.Fprintf(fio.stderr, "vmvault: unexpected frame %q from the mount process (pid %d)\n", typ, h.PID)
			return 1, true
		}
	}
}
