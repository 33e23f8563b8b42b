package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Peers: restic and borg run the same stages on the same live disk files
// in the same run. Both back up the VHDX file as a file (they know nothing
// of its guest content), so their restore gives the VHDX back, and the
// only way into the guest files is to attach the image: the item-level
// copy stage has no peer figure. Passwords go through the environment,
// never argv.

// PeerNames are the peers Run knows.
var PeerNames = []string{ToolRestic, ToolBorg}

// InstalledPeers returns the peers found on PATH.
func InstalledPeers() []string {
	var out []string
	for _, p := range PeerNames {
		if _, err := exec.LookPath(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

type peer struct {
	r       *runner
	name    string
	repo    string
	env     []string
	logical int64
	archive map[string]string // borg: VM -> latest archive name
}

func (p *peer) base(stage string, gen int) StageResult {
	return StageResult{Tool: p.name, Config: "default", Stage: stage, Gen: gen, VMs: len(p.r.fleet.VMs)}
}

func (r *runner) runPeer(ctx context.Context, name string) error {
	if !containsStr(PeerNames, name) {
		return fmt.Errorf("bench: unknown peer %q (peers: %s)", name, strings.Join(PeerNames, ", "))
	}
	if _, err := exec.LookPath(name); err != nil {
		for _, s := range AllStages {
			if r.want(s) {
				r.skip(name, s, name+" not installed")
			}
		}
		return nil
	}
	dir := filepath.Join(r.o.WorkDir, "peers", name)
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	p := &peer{r: r, name: name, repo: filepath.Join(dir, "repo"), archive: map[string]string{}}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	// Caches and security dirs inside the work directory: every run starts
	// cold and nothing lands in the caller's home.
	switch name {
	case ToolRestic:
		p.env = cleanEnv("RESTIC_PASSWORD="+benchPassword, "RESTIC_CACHE_DIR="+filepath.Join(dir, "cache"))
		if _, err := run(ctx, "", "env", append(p.envArgs(), "restic", "-q", "-r", p.repo, "init")...); err != nil {
			return err
		}
	case ToolBorg:
		p.env = cleanEnv("BORG_BASE_DIR="+filepath.Join(dir, "base"), "BORG_PASSPHRASE=",
			"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK=yes")
		if _, err := run(ctx, "", "env", append(p.envArgs(), "borg", "init", "-e", "none", p.repo)...); err != nil {
			return err
		}
	}
	if err := p.backup(ctx, StageFull, 0, false); err != nil {
		return err
	}
	if r.want(StageIncr) {
		for g := 1; g <= r.fleet.Options.Generations; g++ {
			if err := p.backup(ctx, StageIncr, g, false); err != nil {
				return err
			}
		}
	}
	if r.want(StageExpress) {
		if err := p.backup(ctx, StageExpress, r.liveGen, true); err != nil {
			return err
		}
	}
	if r.want(StageRestoreVHDX) {
		p.restore(ctx)
	}
	if r.want(StageRestoreRaw) {
		r.skip(name, StageRestoreRaw, name+" restores the file it backed up (the VHDX); no raw image")
	}
	for _, st := range []string{StageMountSeq, StageMountRand} {
		if !r.want(st) {
			continue
		}
		switch {
		case name == ToolBorg:
			r.skip(name, st, "borg mount needs llfuse/pyfuse3; not part of the peer stages")
		case needFUSE() != nil:
			r.skip(name, st, needFUSE().Error())
		default:
			p.mountStage(ctx, st)
		}
	}
	if r.want(StageItemCopy) {
		r.skip(name, StageItemCopy, name+" stores the VHDX as one file: guest files need the image attached (loop device + ntfs-3g), which is not a copy")
	}
	if r.want(StageCheck) {
		p.check(ctx)
	}
	return nil
}

func containsStr(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// envArgs turns p.env into arguments of env(1) for the untimed helper
// commands (run has no env parameter).
func (p *peer) envArgs() []string { return append([]string{"-i"}, p.env...) }

func (p *peer) backup(ctx context.Context, stage string, gen int, force bool) error {
	r := p.r
	paths, err := r.setLive(gen)
	if err != nil {
		return err
	}
	s := p.base(stage, gen)
	s.VirtualBytes, s.AllocatedBytes, s.BytesRead = r.fleet.GenTotals(gen)
	s.Bytes = s.AllocatedBytes
	before := treeBytes(p.repo)
	var u usage
	for i, path := range paths {
		vm := r.fleet.VMs[i].Name
		var args []string
		switch p.name {
		case ToolRestic:
			args = []string{"restic", "-r", p.repo, "backup", "--json", "--tag", vm, "--host", "bench"}
			if force {
				args = append(args, "--force")
			}
		case ToolBorg:
			name := fmt.Sprintf("%s-g%d", vm, gen)
			if force {
				name += "-express"
			}
			p.archive[vm] = name
			args = []string{"borg", "create", "--json"}
			if force {
				args = append(args, "--files-cache=disabled")
			}
			args = append(args, p.repo+"::"+name)
		}
		out, err := child(ctx, &u, "", p.env, args[0], append(args[1:], path)...)
		if err != nil {
			s.Error = err.Error()
			u.fill(&s)
			r.record(s)
			return err
		}
		s.BytesNew += p.added(out)
	}
	u.fill(&s)
	p.logical += s.AllocatedBytes
	s.StoredBytes = treeBytes(p.repo)
	s.StoredParityBytes, s.RepoBytes = s.StoredBytes, s.StoredBytes
	s.StoredDelta = s.StoredBytes - before
	if s.StoredBytes > 0 {
		s.DedupRatio = float64(p.logical) / float64(s.StoredBytes)
	}
	s.Note = "reads the whole .vhdx file (apparent size)"
	if force {
		s.Note += map[string]string{ToolRestic: "; --force", ToolBorg: "; --files-cache=disabled"}[p.name]
	}
	r.record(s)
	return nil
}

// added is the tool's own count of bytes added to the repository.
func (p *peer) added(out []byte) int64 {
	switch p.name {
	case ToolRestic:
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m struct {
				Type      string `json:"message_type"`
				DataAdded int64  `json:"data_added"`
			}
			if json.Unmarshal(sc.Bytes(), &m) == nil && m.Type == "summary" {
				return m.DataAdded
			}
		}
	case ToolBorg:
		var m struct {
			Archive struct {
				Stats struct {
					Dedup int64 `json:"deduplicated_size"`
				} `json:"stats"`
			} `json:"archive"`
		}
		if json.Unmarshal(out, &m) == nil {
			return m.Archive.Stats.Dedup
		}
	}
	return 0
}

func (p *peer) restore(ctx context.Context) {
	r := p.r
	gen := r.liveGen
	s := p.base(StageRestoreVHDX, gen)
	s.VirtualBytes, s.AllocatedBytes, _ = r.fleet.GenTotals(gen)
	s.Bytes = s.AllocatedBytes
	dir := filepath.Join(r.o.WorkDir, "restore", p.name)
	os.RemoveAll(dir)
	defer os.RemoveAll(dir)
	var u usage
	for _, vm := range r.fleet.VMs {
		t := filepath.Join(dir, vm.Name)
		if err := os.MkdirAll(t, 0o755); err != nil {
			s.Error = err.Error()
			break
		}
		var err error
		switch p.name {
		case ToolRestic:
			_, err = child(ctx, &u, "", p.env, "restic", "-r", p.repo, "restore", "latest", "--tag", vm.Name, "--host", "bench", "--target", t)
		case ToolBorg:
			_, err = child(ctx, &u, t, p.env, "borg", "extract", p.repo+"::"+p.archive[vm.Name])
		}
		if err != nil {
			s.Error = err.Error()
			break
		}
	}
	u.fill(&s)
	if s.Error == "" {
		got, err := findFile(filepath.Join(dir, r.fleet.VMs[0].Name), ".vhdx")
		if err == nil {
			err = compareRaw(r.fleet.Image(0, gen), got, nil)
		}
		if err != nil {
			s.Error = "verify: " + err.Error()
		} else {
			s.Verified = "vm0: restored file equals the source .vhdx"
		}
	}
	r.record(s)
}

func (p *peer) check(ctx context.Context) {
	s := p.base(StageCheck, p.r.liveGen)
	s.Bytes = treeBytes(p.repo)
	var u usage
	var err error
	switch p.name {
	case ToolRestic:
		_, err = child(ctx, &u, "", p.env, "restic", "-r", p.repo, "check", "--read-data")
		s.Note = "restic check --read-data"
	case ToolBorg:
		_, err = child(ctx, &u, "", p.env, "borg", "check", "--verify-data", p.repo)
		s.Note = "borg check --verify-data"
	}
	if err != nil {
		s.Error = err.Error()
	}
	u.fill(&s)
	p.r.record(s)
}

// mountStage reads vm0's latest image through restic mount.
func (p *peer) mountStage(ctx context.Context, stage string) {
	r := p.r
	s := p.base(stage, r.liveGen)
	s.VMs = 1
	mnt := filepath.Join(r.o.WorkDir, "mnt", p.name)
	vm := r.fleet.VMs[0].Name
	spec := mountSpec{tool: p.name, args: []string{"restic", "-r", p.repo, "mount", mnt}, env: p.env, mnt: mnt,
		find: func(mnt string) (string, error) {
			d, err := filepath.EvalSymlinks(filepath.Join(mnt, "tags", vm, "latest"))
			if err != nil {
				return "", err
			}
			return findFile(d, vm+".vhdx")
		}}
	r.mounted(ctx, &s, spec, func(u *usage, target string) error {
		if stage == StageMountSeq {
			n, err := seqRead(ctx, u, target)
			s.Bytes = n
			s.Note = "dd bs=1M of the .vhdx through restic mount"
			return err
		}
		rr, err := randRead(ctx, u, target, r.o.RandRuntime)
		s.Bytes, s.IOPS, s.LatencyMeanUS, s.LatencyP99US, s.Note = rr.bytes, rr.iops, rr.meanUS, rr.p99US, rr.reader+" of the .vhdx through restic mount"
		return err
	})
	r.record(s)
}
