package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/engine"
)

// Stage names, in the order a run performs them.
const (
	StageFull        = "full"         // first backup of every VM (generation 0)
	StageIncr        = "incr"         // backup of every VM's next generation (one record per generation)
	StageExpress     = "express"      // express full (--full) of the last generation
	StageRestoreVHDX = "restore-vhdx" // restore every VM's latest point as VHDX
	StageRestoreRaw  = "restore-raw"  // ... and as a raw image
	StageMountSeq    = "mount-seq"    // mount, read vm0's latest .vhdx sequentially
	StageMountRand   = "mount-rand"   // mount, random 4 KiB reads of that file
	StageItemCopy    = "item-copy"    // mount, cp -a a guest folder out and compare it
	StageCheck       = "check"        // check --read-data
)

// AllStages lists every stage.
var AllStages = []string{StageFull, StageIncr, StageExpress, StageRestoreVHDX, StageRestoreRaw,
	StageMountSeq, StageMountRand, StageItemCopy, StageCheck}

// Tool names in the report.
const (
	ToolVMVault = "vmvault"
	ToolRestic  = "restic"
	ToolBorg    = "borg"
)

// Options configure Run.
type Options struct {
	// Binary is the vmvault executable every vmvault stage runs as a child
	// process (clean CPU and peak RSS per stage; everything an admin waits
	// for, repository open included).
	Binary string
	// WorkDir holds the fleet cache, repositories, restores and mounts.
	WorkDir string
	Fleet   FleetOptions
	// Stages to run (nil: all). Stages that need a backup get the full one.
	Stages []string
	// Peers to run the same stages with: "restic", "borg".
	Peers []string
	// Knobs of the main run; Sweeps add one run per value.
	Knobs  Knobs
	Sweeps []Sweep
	// RandRuntime is the length of the random-read stage (default 10s).
	RandRuntime time.Duration
	// Command is recorded in the report.
	Command string
	// Logf gets progress lines (default: none).
	Logf func(format string, a ...any)
}

// StageResult is one measured stage of one tool and configuration.
type StageResult struct {
	Tool   string `json:"tool"`
	Config string `json:"config"` // "default" or the swept knob, e.g. "chunk-avg=1M"
	Stage  string `json:"stage"`
	Gen    int    `json:"gen"` // generation of the images involved
	VMs    int    `json:"vms"`

	WallSeconds  float64 `json:"wall_s"`
	UserSeconds  float64 `json:"user_s"`
	SysSeconds   float64 `json:"sys_s"`
	CPUSeconds   float64 `json:"cpu_s"`
	PeakRSSBytes int64   `json:"peak_rss_bytes"` // largest child process of the stage

	// VirtualBytes and AllocatedBytes are those of the images the stage
	// covers (the same for every tool); Bytes is what the rates are of:
	// allocated bytes for backups and restores, bytes read through the
	// mount, the copied folder, the shard bytes check reads.
	VirtualBytes    int64   `json:"virtual_bytes"`
	AllocatedBytes  int64   `json:"allocated_bytes"`
	Bytes           int64   `json:"bytes"`
	MBsVirtual      float64 `json:"mb_s_virtual"`
	MBsAllocated    float64 `json:"mb_s_allocated"`
	MBs             float64 `json:"mb_s"`
	CPUSecondsPerGB float64 `json:"cpu_s_per_gb"` // per GB (1e9) of Bytes

	// Backups: BytesRead from the sources (vmvault leaves out zeros and
	// page files), BytesNew the raw bytes the repository did not have
	// (vmvault) or the tool's own "added" figure, StoredDelta the growth of
	// the stored data.
	BytesRead   int64 `json:"bytes_read,omitempty"`
	BytesNew    int64 `json:"bytes_new,omitempty"`
	StoredDelta int64 `json:"stored_delta,omitempty"`
	// After the stage: stored data without parity (vmvault: data shard
	// files; peers: their repository), with parity (vmvault: all shard
	// files; peers: the same), and the whole repository directory (index,
	// catalog, caches that live in it).
	StoredBytes       int64 `json:"stored_bytes,omitempty"`
	StoredParityBytes int64 `json:"stored_with_parity_bytes,omitempty"`
	RepoBytes         int64 `json:"repo_bytes,omitempty"`
	// DedupRatio is the allocated bytes of every backup so far divided by
	// StoredBytes (data reduction by dedup and compression together).
	DedupRatio float64 `json:"dedup_ratio,omitempty"`

	// Random reads (fio, or a pread loop when fio is missing).
	IOPS          float64 `json:"iops,omitempty"`
	LatencyMeanUS float64 `json:"lat_mean_us,omitempty"`
	LatencyP99US  float64 `json:"lat_p99_us,omitempty"`
	Files         int     `json:"files,omitempty"`

	Verified string `json:"verified,omitempty"` // what was checked after the timing
	Note     string `json:"note,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Skip records a stage not run and why.
type Skip struct {
	Tool   string `json:"tool"`
	Stage  string `json:"stage"`
	Reason string `json:"reason"`
}

// usage is what a set of child processes cost.
type usage struct {
	wall      time.Duration
	user, sys time.Duration
	maxRSS    int64
}

func (u *usage) add(ps *os.ProcessState) {
	if ps == nil {
		return
	}
	u.user += ps.UserTime()
	u.sys += ps.SystemTime()
	u.maxRSS = max(u.maxRSS, childMaxRSS(ps))
}

func (u usage) fill(s *StageResult) {
	s.WallSeconds = u.wall.Seconds()
	s.UserSeconds = u.user.Seconds()
	s.SysSeconds = u.sys.Seconds()
	s.CPUSeconds = s.UserSeconds + s.SysSeconds
	s.PeakRSSBytes = u.maxRSS
}

// rates fills the derived figures of s.
func (s *StageResult) rates() {
	if s.WallSeconds > 0 && s.Error == "" {
		s.MBsVirtual = float64(s.VirtualBytes) / 1e6 / s.WallSeconds
		s.MBsAllocated = float64(s.AllocatedBytes) / 1e6 / s.WallSeconds
		s.MBs = float64(s.Bytes) / 1e6 / s.WallSeconds
	}
	if s.Bytes > 0 {
		s.CPUSecondsPerGB = s.CPUSeconds / (float64(s.Bytes) / 1e9)
	}
}

// child runs one program, adds its wall time and rusage to u and returns
// its stdout.
func child(ctx context.Context, u *usage, dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &limitedBuffer{b: &errb, n: 64 << 10}
	t := time.Now()
	err := cmd.Run()
	u.wall += time.Since(t)
	u.add(cmd.ProcessState)
	if err != nil {
		return out.Bytes(), fmt.Errorf("bench: %s %s: %w: %s", filepath.Base(name), strings.Join(args[:min(len(args), 4)], " "), err, lastLine(errb.String()))
	}
	return out.Bytes(), nil
}

// cleanEnv is the environment of the children: ours, without passwords
// that might leak in from the caller's shell, plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "VMVAULT_PASSWORD=") || strings.HasPrefix(e, "RESTIC_") || strings.HasPrefix(e, "BORG_") {
			continue
		}
		env = append(env, e)
	}
	return append(env, extra...)
}

// runner is one Run.
type runner struct {
	o       Options
	fleet   *Fleet
	stages  map[string]bool
	rep     *Report
	live    string // live/<vm>/<vm>.vhdx: the "current" disk of each VM
	liveGen int
}

func (r *runner) logf(format string, a ...any) {
	if r.o.Logf != nil {
		r.o.Logf(format, a...)
	}
}

func (r *runner) want(stage string) bool { return r.stages[stage] }

// Run builds (or reuses) the fleet and runs the stages for vmvault with
// the main knobs, each sweep value, and each peer.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Binary == "" {
		return nil, errors.New("bench: no vmvault binary given")
	}
	if o.WorkDir == "" {
		return nil, errors.New("bench: no work directory given")
	}
	if o.RandRuntime == 0 {
		o.RandRuntime = 10 * time.Second
	}
	r := &runner{o: o, stages: map[string]bool{}}
	if len(o.Stages) == 0 {
		o.Stages = AllStages
	}
	for _, s := range o.Stages {
		if !slices.Contains(AllStages, s) {
			return nil, fmt.Errorf("bench: unknown stage %q (stages: %s)", s, strings.Join(AllStages, ","))
		}
		r.stages[s] = true
	}
	for _, p := range o.Peers {
		if !containsStr(PeerNames, p) {
			return nil, fmt.Errorf("bench: unknown peer %q (peers: %s, or none)", p, strings.Join(PeerNames, ", "))
		}
	}
	// Every other stage needs a recovery point to work on.
	r.stages[StageFull] = true
	r.rep = newReport(o)
	r.rep.Machine = describeMachine(ctx, o.Binary, o.Peers)

	fo := o.Fleet
	fo.Dir = filepath.Join(o.WorkDir, "cache")
	if fo.Logf == nil {
		fo.Logf = r.logf
	}
	if !r.want(StageIncr) {
		fo.Generations = 0 // nothing would use them
	}
	f, err := BuildFleet(ctx, fo)
	if err != nil {
		return nil, err
	}
	r.fleet = f
	r.rep.Fleet = f
	// Raw conversions made for the restore checks are large: gone at the end.
	defer os.RemoveAll(filepath.Join(o.WorkDir, "verify"))
	r.live = filepath.Join(o.WorkDir, "live")

	main := ourConfig{name: "default", knobs: o.Knobs}
	if err := r.runOurs(ctx, main, true); err != nil {
		return r.finish(), err
	}
	for _, sw := range o.Sweeps {
		for _, v := range sw.Values {
			k, err := o.Knobs.With(sw.Key, v)
			if err != nil {
				return r.finish(), err
			}
			if err := r.runOurs(ctx, ourConfig{name: sw.Key + "=" + v, knobs: k, sweepKey: sw.Key}, false); err != nil {
				return r.finish(), err
			}
		}
	}
	for _, p := range o.Peers {
		if err := r.runPeer(ctx, p); err != nil {
			return r.finish(), err
		}
	}
	return r.finish(), nil
}

func (r *runner) finish() *Report {
	r.rep.End = time.Now().UTC()
	r.rep.WallSeconds = r.rep.End.Sub(r.rep.Start).Seconds()
	r.rep.Machine.LoadEnd = loadAvg()
	return r.rep
}

func (r *runner) record(s StageResult) {
	s.rates()
	r.rep.Stages = append(r.rep.Stages, s)
	line := fmt.Sprintf("%-8s %-22s %-13s g%d  %7.2fs  %8.1f MB/s  cpu %6.2fs  rss %5.0f MB",
		s.Tool, s.Config, s.Stage, s.Gen, s.WallSeconds, s.MBs, s.CPUSeconds, float64(s.PeakRSSBytes)/1e6)
	if s.Error != "" {
		line += "  ERROR " + s.Error
	}
	r.logf("%s", line)
}

func (r *runner) skip(tool, stage, reason string) {
	r.rep.Skipped = append(r.rep.Skipped, Skip{tool, stage, reason})
	r.logf("%-8s %-13s skipped: %s", tool, stage, reason)
}

// setLive points every VM's live disk at generation gen (hard links: the
// same path changes content from one generation to the next, as a VM's
// disk file does) and warms the page cache so every tool starts alike.
func (r *runner) setLive(gen int) ([]string, error) {
	t := time.Now()
	defer func() {
		r.logf("live disks at generation %d (page cache warmed in %.1fs)", gen, time.Since(t).Seconds())
	}()
	var paths []string
	for i, vm := range r.fleet.VMs {
		p := filepath.Join(r.live, vm.Name, vm.Name+".vhdx")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		os.Remove(p)
		if err := os.Link(r.fleet.Image(i, gen), p); err != nil {
			return nil, fmt.Errorf("bench: live disk: %w", err)
		}
		if err := warm(p); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	r.liveGen = gen
	return paths, nil
}

// warm reads the data regions of a (sparse) file.
func warm(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("bench: warm: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("bench: warm: %w", err)
	}
	buf := make([]byte, 1<<20)
	const seekData, seekHole = 3, 4
	for off := int64(0); off < fi.Size(); {
		d, err := f.Seek(off, seekData)
		if err != nil {
			break // ENXIO: no data after off
		}
		h, err := f.Seek(d, seekHole)
		if err != nil {
			h = fi.Size()
		}
		for p := d; p < h; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), h-p)], p)
			if n == 0 && err != nil {
				return fmt.Errorf("bench: warm: %w", err)
			}
			p += int64(n)
		}
		off = h
	}
	return nil
}

// ourConfig is one vmvault configuration: the main one or a sweep value.
type ourConfig struct {
	name     string
	knobs    Knobs
	sweepKey string
}

const benchPassword = "vmvault-bench" // throwaway repositories of synthetic data

type ours struct {
	r       *runner
	cfg     ourConfig
	repo    string
	env     []string
	logical int64 // allocated bytes of every backup so far
}

func (r *runner) runOurs(ctx context.Context, cfg ourConfig, all bool) error {
	o := &ours{r: r, cfg: cfg, repo: filepath.Join(r.o.WorkDir, "repos", "vmvault-"+safeName(cfg.name))}
	if err := os.RemoveAll(o.repo); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	var pw []byte
	extra := []string{}
	if cfg.knobs.Encrypt {
		pw = []byte(benchPassword)
		extra = append(extra, "VMVAULT_PASSWORD="+benchPassword)
	}
	o.env = cleanEnv(extra...)
	// The repository is made in-process: chunkstore.InitOptions has knobs
	// (chunk sizes, zstd level, pack size) that `vmvault init` does not
	// expose; engine.Open then adds the catalog as `vmvault init` would.
	if err := chunkstore.Init(o.repo, cfg.knobs.initOptions(pw)); err != nil {
		return fmt.Errorf("bench: init %s: %w", cfg.name, err)
	}
	repo, err := engine.Open(o.repo, engine.OpenOptions{Password: pw})
	if err != nil {
		return fmt.Errorf("bench: init %s: %w", cfg.name, err)
	}
	if err := repo.Close(); err != nil {
		return fmt.Errorf("bench: init %s: %w", cfg.name, err)
	}
	if d, err := describeRepo(o.repo); err == nil {
		if r.rep.Repos == nil {
			r.rep.Repos = map[string]string{}
		}
		r.rep.Repos[cfg.name] = d
	}
	// Repositories are large and the report keeps their figures.
	defer os.RemoveAll(o.repo)

	if err := o.backup(ctx, StageFull, 0, false); err != nil {
		return err
	}
	if r.want(StageIncr) {
		for g := 1; g <= r.fleet.Options.Generations; g++ {
			if err := o.backup(ctx, StageIncr, g, false); err != nil {
				return err
			}
		}
	}
	last := r.liveGen
	sweepMount := cfg.sweepKey == "cache-size"
	if all && r.want(StageExpress) {
		if err := o.backup(ctx, StageExpress, last, true); err != nil {
			return err
		}
	}
	if all && r.want(StageRestoreVHDX) {
		o.restore(ctx, "vhdx")
	}
	if all && r.want(StageRestoreRaw) {
		o.restore(ctx, "raw")
	}
	if (all || sweepMount) && (r.want(StageMountSeq) || r.want(StageMountRand) || r.want(StageItemCopy)) {
		if err := needFUSE(); err != nil {
			for _, s := range []string{StageMountSeq, StageMountRand, StageItemCopy} {
				if r.want(s) {
					r.skip(ToolVMVault, s, err.Error())
				}
			}
		} else {
			if r.want(StageMountSeq) {
				o.mountStage(ctx, StageMountSeq)
			}
			if r.want(StageMountRand) {
				o.mountStage(ctx, StageMountRand)
			}
			if all && r.want(StageItemCopy) {
				o.mountStage(ctx, StageItemCopy)
			}
		}
	}
	if all && r.want(StageCheck) {
		o.check(ctx)
	}
	return nil
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, s)
}

func (o *ours) base(stage string, gen int) StageResult {
	return StageResult{Tool: ToolVMVault, Config: o.cfg.name, Stage: stage, Gen: gen, VMs: len(o.r.fleet.VMs)}
}

// backup runs `vmvault backup` for every VM on generation gen. A failure
// is an error of the run: later stages need the recovery point.
func (o *ours) backup(ctx context.Context, stage string, gen int, full bool) error {
	paths, err := o.r.setLive(gen)
	if err != nil {
		return err
	}
	s := o.base(stage, gen)
	s.VirtualBytes, s.AllocatedBytes, _ = o.r.fleet.GenTotals(gen)
	s.Bytes = s.AllocatedBytes
	before, _ := repoStats(o.repo)
	var u usage
	for i, p := range paths {
		args := []string{"backup", "--json", "--repo", o.repo, "--vm", o.r.fleet.VMs[i].Name}
		if full {
			args = append(args, "--full")
		}
		if o.cfg.knobs.Concurrency > 0 {
			args = append(args, "--workers", strconv.Itoa(o.cfg.knobs.Concurrency))
		}
		out, err := child(ctx, &u, "", o.env, o.r.o.Binary, append(args, p)...)
		if err != nil {
			s.Error = err.Error()
			u.fill(&s)
			o.r.record(s)
			return err
		}
		var rp struct {
			BytesRead int64 `json:"bytes_read"`
			BytesNew  int64 `json:"bytes_new"`
		}
		if err := json.Unmarshal(out, &rp); err != nil {
			return fmt.Errorf("bench: backup --json: %w", err)
		}
		s.BytesRead += rp.BytesRead
		s.BytesNew += rp.BytesNew
	}
	u.fill(&s)
	after, err := repoStats(o.repo)
	if err != nil {
		return err
	}
	o.logical += s.AllocatedBytes
	s.StoredBytes, s.StoredParityBytes, s.RepoBytes = after.data, after.data+after.parity, after.total
	s.StoredDelta = after.data - before.data
	if s.StoredBytes > 0 {
		s.DedupRatio = float64(o.logical) / float64(s.StoredBytes)
	}
	if stage == StageIncr || stage == StageExpress {
		s.Note = "page files left out (vmvault default)"
	}
	o.r.record(s)
	return nil
}

// restore restores every VM's latest point in format and checks vm0's
// result against its source with qemu-img compare (not timed).
func (o *ours) restore(ctx context.Context, format string) {
	stage := StageRestoreVHDX
	if format == "raw" {
		stage = StageRestoreRaw
	}
	gen := o.r.liveGen
	s := o.base(stage, gen)
	s.VirtualBytes, s.AllocatedBytes, _ = o.r.fleet.GenTotals(gen)
	s.Bytes = s.AllocatedBytes
	dir := filepath.Join(o.r.o.WorkDir, "restore", "vmvault-"+format)
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	var u usage
	for _, vm := range o.r.fleet.VMs {
		if _, err := child(ctx, &u, "", o.env, o.r.o.Binary, "restore", "-q", "--repo", o.repo, "--vm", vm.Name,
			"--rp", "latest", "--to", filepath.Join(dir, vm.Name), "--format", format); err != nil {
			s.Error = err.Error()
			break
		}
	}
	u.fill(&s)
	if s.Error == "" {
		v, err := o.r.verifyOurRestore(ctx, filepath.Join(dir, o.r.fleet.VMs[0].Name), format, gen)
		if err != nil {
			s.Error = "verify: " + err.Error()
		}
		s.Verified = v
	}
	o.r.record(s)
}

// check runs check --read-data.
func (o *ours) check(ctx context.Context) {
	s := o.base(StageCheck, o.r.liveGen)
	st, _ := repoStats(o.repo)
	s.Bytes = st.data + st.parity
	var u usage
	if _, err := child(ctx, &u, "", o.env, o.r.o.Binary, "check", "--repo", o.repo, "--read-data", "--json"); err != nil {
		s.Error = err.Error()
	}
	u.fill(&s)
	s.Note = "reads every data and parity shard block"
	o.r.record(s)
}

// repoSizes are a vmvault repository's bytes on disk.
type repoSizes struct{ data, parity, total int64 }

// repoStats sums the shard files of a vmvault repository: shard i of a
// pack is a data shard when i < K (chunkstore's shardName), parity
// otherwise.
func repoStats(dir string) (repoSizes, error) {
	var st repoSizes
	b, err := os.ReadFile(filepath.Join(dir, "config"))
	if err != nil {
		return st, fmt.Errorf("bench: %w", err)
	}
	var cfg chunkstore.Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return st, fmt.Errorf("bench: repository config: %w", err)
	}
	for _, p := range cfg.Pools {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		filepath.WalkDir(filepath.Join(p, "packs"), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return nil
			}
			ext := filepath.Ext(path)
			i, err := strconv.Atoi(strings.TrimPrefix(ext, "."))
			if err != nil {
				return nil
			}
			if i < cfg.DataShards {
				st.data += fi.Size()
			} else {
				st.parity += fi.Size()
			}
			return nil
		})
	}
	st.total = treeBytes(dir)
	return st, nil
}

// dirBytes is the apparent size of every file under dir.
func treeBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// describeRepo summarizes a repository's fixed parameters from its config.
func describeRepo(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config"))
	if err != nil {
		return "", err
	}
	var c chunkstore.Config
	if err := json.Unmarshal(b, &c); err != nil {
		return "", err
	}
	comp := c.Compression
	if comp == "zstd" {
		comp = fmt.Sprintf("zstd:%d", c.ZstdLevel)
	}
	enc := "unencrypted"
	if c.Encryption != nil {
		enc = "AES-256-GCM"
	}
	return fmt.Sprintf("chunks %s/%s/%s, %s, RS %d+%d, packs %s, %s", kib(c.Chunker.Min), kib(c.Chunker.Avg), kib(c.Chunker.Max),
		comp, c.DataShards, c.ParityShards, kib(c.PackSize), enc), nil
}

func kib(n int) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%dM", n>>20)
	}
	return fmt.Sprintf("%dK", n>>10)
}
