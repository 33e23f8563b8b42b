package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything a run measured (the --json document).
type Report struct {
	Version     int       `json:"version"`
	Command     string    `json:"command"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	WallSeconds float64   `json:"wall_s"`
	Machine     Machine   `json:"machine"`
	Knobs       Knobs     `json:"knobs"` // of the main run ("default")
	// Repos describes each vmvault configuration's repository as created.
	Repos   map[string]string `json:"repos,omitempty"`
	Sweeps  []Sweep           `json:"sweeps,omitempty"`
	Fleet   *Fleet            `json:"fleet"`
	Stages  []StageResult     `json:"stages"`
	Skipped []Skip            `json:"skipped,omitempty"`
}

// Machine describes where the figures were measured.
type Machine struct {
	Host      string            `json:"host"`
	CPUModel  string            `json:"cpu_model"`
	Cores     int               `json:"cores"`
	MemBytes  int64             `json:"mem_bytes"`
	Kernel    string            `json:"kernel"`
	GoVersion string            `json:"go_version"`
	VMVault   string            `json:"vmvault"`
	Peers     map[string]string `json:"peers,omitempty"` // tool -> version line
	LoadStart [3]float64        `json:"load_start"`
	LoadEnd   [3]float64        `json:"load_end"`
}

func newReport(o Options) *Report {
	return &Report{Version: 1, Command: o.Command, Start: time.Now().UTC(), Knobs: o.Knobs, Sweeps: o.Sweeps}
}

func describeMachine(ctx context.Context, bin string, peers []string) Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), LoadStart: loadAvg(), Peers: map[string]string{}}
	m.Host, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemBytes = kb * 1024
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil {
		m.VMVault = lastLine(string(out))
	}
	for _, p := range peers {
		if out, err := exec.CommandContext(ctx, p, "--version").Output(); err == nil {
			m.Peers[p] = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
		} else if out, err := exec.CommandContext(ctx, p, "version").Output(); err == nil {
			m.Peers[p] = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
		}
	}
	return m
}

func loadAvg() [3]float64 {
	var l [3]float64
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return l
	}
	f := strings.Fields(string(b))
	for i := 0; i < 3 && i < len(f); i++ {
		l[i], _ = strconv.ParseFloat(f[i], 64)
	}
	return l
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("bench: json: %w", err)
	}
	return nil
}

// WriteJSONFile writes the report to path.
func (r *Report) WriteJSONFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := r.WriteJSON(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

func mb(n int64) string { return fmt.Sprintf("%.0f", float64(n)/1e6) }

func f1(v float64) string {
	if v == 0 {
		return "-"
	}
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func stageLabel(s StageResult) string {
	if s.Stage == StageIncr {
		return fmt.Sprintf("incr g%d", s.Gen)
	}
	return s.Stage
}

// WriteTable prints the human-readable report: machine and fleet, every
// stage of the main configuration and the peers, vmvault's speed relative
// to each peer, stored bytes per generation, and the sweeps.
func (r *Report) WriteTable(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "machine: %s, %d cores, %.1f GB RAM, Linux %s, %s; load %.2f %.2f %.2f at start, %.2f %.2f %.2f at end\n",
		m.CPUModel, m.Cores, float64(m.MemBytes)/1e9, m.Kernel, m.GoVersion,
		m.LoadStart[0], m.LoadStart[1], m.LoadStart[2], m.LoadEnd[0], m.LoadEnd[1], m.LoadEnd[2])
	if len(m.Peers) > 0 {
		var ps []string
		for _, k := range sortedKeys(m.Peers) {
			ps = append(ps, m.Peers[k])
		}
		fmt.Fprintf(w, "peers: %s\n", strings.Join(ps, "; "))
	}
	if f := r.Fleet; f != nil && len(f.VMs) > 0 {
		v, a, fb := f.GenTotals(0)
		cached := "built"
		if f.Cached {
			cached = "cached"
		}
		fmt.Fprintf(w, "fleet: %d VMs x %s virtual (dynamic VHDX, GPT: NTFS + ext4), %d churn generations at %.0f%%; generation 0: %s MB allocated, %s MB of .vhdx files, %s MB virtual; %d shared OS files (%s MB); %s in %.0fs\n",
			len(f.VMs), fmtGiB(f.Options.Size), f.Options.Generations, f.Options.Churn*100, mb(a), mb(fb), mb(v),
			f.OSFiles, mb(f.OSBytes), cached, f.BuildSeconds)
	}
	if d := r.Repos["default"]; d != "" {
		fmt.Fprintf(w, "vmvault repository: %s\n", d)
	}
	fmt.Fprintf(w, "run: %.0fs wall; MB = 10^6 bytes; rates are of allocated bytes for backups and restores, of bytes read for mounts, of the folder for item-copy, of shard bytes for check\n\n", r.WallSeconds)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tool\tstage\twall s\tMB/s\tvirt MB/s\tcpu s\tcpu s/GB\tpeak RSS MB\tnew MB\tstored MB\t+parity MB\tdedup\tIOPS\t")
	for _, s := range r.Stages {
		if s.Config != "default" {
			continue
		}
		iops := "-"
		if s.IOPS > 0 {
			iops = fmt.Sprintf("%.0f", s.IOPS)
		}
		stored, parity, dedup, newb := "-", "-", "-", "-"
		if s.StoredBytes > 0 {
			stored, parity, dedup = mb(s.StoredBytes), mb(s.StoredParityBytes), fmt.Sprintf("%.2fx", s.DedupRatio)
			newb = mb(s.StoredDelta)
		}
		label := stageLabel(s)
		if s.Error != "" {
			label += " FAILED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%s\t%s\t%.2f\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t\n", s.Tool, label, s.WallSeconds,
			f1(s.MBs), f1(s.MBsVirtual), s.CPUSeconds, f1(s.CPUSecondsPerGB), float64(s.PeakRSSBytes)/1e6,
			newb, stored, parity, dedup, iops)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "new MB: growth of the stored data (vmvault: data shards, no parity; peers: repository directory)")

	r.writeRatios(w)
	r.writeGenerations(w)
	r.writeSweeps(w)
	for _, s := range r.Stages {
		if s.Error != "" {
			fmt.Fprintf(w, "FAILED %s %s %s: %s\n", s.Tool, s.Config, stageLabel(s), s.Error)
		}
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintln(w, "\nnot run:")
		for _, s := range r.Skipped {
			fmt.Fprintf(w, "  %s %s: %s\n", s.Tool, s.Stage, s.Reason)
		}
	}
	return nil
}

func fmtGiB(n int64) string {
	if n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func sortedKeys(m map[string]string) []string {
	var k []string
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

// peerTools are the tools besides vmvault in the default configuration.
func (r *Report) peerTools() []string {
	var out []string
	for _, s := range r.Stages {
		if s.Tool != ToolVMVault && !containsStr(out, s.Tool) {
			out = append(out, s.Tool)
		}
	}
	return out
}

// find returns the default-configuration record of tool for stage/gen.
func (r *Report) find(tool, stage string, gen int) *StageResult {
	for i := range r.Stages {
		s := &r.Stages[i]
		if s.Tool == tool && s.Config == "default" && s.Stage == stage && s.Gen == gen && s.Error == "" {
			return s
		}
	}
	return nil
}

func (r *Report) writeRatios(w io.Writer) {
	peers := r.peerTools()
	if len(peers) == 0 {
		return
	}
	fmt.Fprintln(w, "\nvmvault vs peers (same images, same run): wall seconds and speed-up = peer wall / vmvault wall; for random reads IOPS ratio")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	hdr := "stage\tvmvault s\t"
	for _, p := range peers {
		hdr += p + " s\tx vs " + p + "\t"
	}
	fmt.Fprintln(tw, hdr)
	for _, s := range r.Stages {
		if s.Tool != ToolVMVault || s.Config != "default" || s.Error != "" {
			continue
		}
		line := fmt.Sprintf("%s\t%.2f\t", stageLabel(s), s.WallSeconds)
		any := false
		for _, p := range peers {
			ps := r.find(p, s.Stage, s.Gen)
			if s.Stage == StageRestoreRaw || s.Stage == StageRestoreVHDX {
				ps = r.find(p, StageRestoreVHDX, s.Gen) // peers restore the file they have: the VHDX
			}
			if ps == nil {
				line += "-\t-\t"
				continue
			}
			any = true
			ratio := ps.WallSeconds / s.WallSeconds
			if s.Stage == StageMountRand && ps.IOPS > 0 {
				ratio = s.IOPS / ps.IOPS
			}
			line += fmt.Sprintf("%.2f\t%.2fx\t", ps.WallSeconds, ratio)
		}
		if any {
			fmt.Fprintln(tw, line)
		}
	}
	tw.Flush()
	// Stored bytes after the last backup.
	last := func(tool string) *StageResult {
		var out *StageResult
		for i := range r.Stages {
			s := &r.Stages[i]
			if s.Tool == tool && s.Config == "default" && s.StoredBytes > 0 && s.Error == "" {
				out = s
			}
		}
		return out
	}
	if o := last(ToolVMVault); o != nil {
		fmt.Fprintf(w, "repository after the last backup: vmvault %s MB stored (%s MB with parity, %s MB directory)", mb(o.StoredBytes), mb(o.StoredParityBytes), mb(o.RepoBytes))
		for _, p := range peers {
			if ps := last(p); ps != nil {
				fmt.Fprintf(w, ", %s %s MB (%.2fx vmvault's)", p, mb(ps.StoredBytes), float64(ps.StoredBytes)/float64(o.StoredBytes))
			}
		}
		fmt.Fprintln(w)
	}
}

// genPoint is the stored size of one tool after the backup of a generation.
type genPoint struct {
	tool                string
	gen                 int
	stored, withParity  int64
	newBytes, allocated int64
}

// generations returns, per tool of the default configuration, the stored
// bytes after the full backup and after each incremental.
func (r *Report) generations() []genPoint {
	var out []genPoint
	for _, s := range r.Stages {
		if s.Config != "default" || s.Error != "" || (s.Stage != StageFull && s.Stage != StageIncr) {
			continue
		}
		out = append(out, genPoint{s.Tool, s.Gen, s.StoredBytes, s.StoredParityBytes, s.StoredDelta, s.AllocatedBytes})
	}
	return out
}

func (r *Report) writeGenerations(w io.Writer) {
	pts := r.generations()
	if len(pts) == 0 {
		return
	}
	fmt.Fprintln(w, "\nstored bytes per generation (MB; new = growth of that backup)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tool\tgen\tallocated\tnew\tstored\twith parity\t")
	for _, p := range pts {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", p.tool, p.gen, mb(p.allocated), mb(p.newBytes), mb(p.stored), mb(p.withParity))
	}
	tw.Flush()
}

func (r *Report) writeSweeps(w io.Writer) {
	if len(r.Sweeps) == 0 {
		return
	}
	fmt.Fprintln(w, "\nsweeps (vmvault, fresh repository per value, other knobs at defaults; default = the main run)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "config\tfull MB/s\tfull cpu s/GB\tincr MB/s\tincr new MB\tstored MB\t+parity MB\tdedup\tpeak RSS MB\tmount-seq MB/s\trand IOPS\t")
	configs := []string{"default"}
	for _, sw := range r.Sweeps {
		for _, v := range sw.Values {
			configs = append(configs, sw.Key+"="+v)
		}
	}
	for _, c := range configs {
		var full, mseq, mrand *StageResult
		var incrWall, incrAlloc float64
		var incrNew, stored, parity, rss int64
		var dedup float64
		for i := range r.Stages {
			s := &r.Stages[i]
			if s.Tool != ToolVMVault || s.Config != c || s.Error != "" {
				continue
			}
			rss = max(rss, s.PeakRSSBytes)
			switch s.Stage {
			case StageFull:
				full = s
			case StageIncr:
				incrWall += s.WallSeconds
				incrAlloc += float64(s.AllocatedBytes)
				incrNew += s.StoredDelta
			case StageMountSeq:
				mseq = s
			case StageMountRand:
				mrand = s
			}
			if s.StoredBytes > 0 && (s.Stage == StageFull || s.Stage == StageIncr) {
				stored, parity, dedup = s.StoredBytes, s.StoredParityBytes, s.DedupRatio
			}
		}
		if full == nil {
			continue
		}

		incr := "-"
		if incrWall > 0 {
			incr = f1(incrAlloc / 1e6 / incrWall)
		}
		ms, mr := "-", "-"
		if mseq != nil {
			ms = f1(mseq.MBs)
		}
		if mrand != nil {
			mr = fmt.Sprintf("%.0f", mrand.IOPS)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2fx\t%.0f\t%s\t%s\t\n", c, f1(full.MBs), f1(full.CPUSecondsPerGB), incr,
			mb(incrNew), mb(stored), mb(parity), dedup, float64(rss)/1e6, ms, mr)
	}
	tw.Flush()
	for _, c := range configs {
		if d := r.Repos[c]; d != "" {
			fmt.Fprintf(w, "  %s: %s\n", c, d)
		}
	}
}
