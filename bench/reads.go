package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Mount stages: the FUSE server is a child process started per stage, so
// every stage starts with a cold kernel page cache (new inodes) and the
// server's CPU and peak RSS belong to that stage alone. The wall time runs
// from the mount command's start to the end of the reading: an admin waits
// for the mount to come up, too.

// mountSpec says how to mount a repository and where the image is in it.
type mountSpec struct {
	tool string
	args []string // program and arguments
	env  []string
	mnt  string
	// find returns the path of vm0's latest image (or the item folder)
	// under the mount point, or an error while it is not there yet.
	find func(mnt string) (string, error)
}

// mounted mounts spec, runs body on the found path and records usage of
// the server and of body's children in s.
func (r *runner) mounted(ctx context.Context, s *StageResult, spec mountSpec, body func(u *usage, target string) error) {
	if err := os.MkdirAll(spec.mnt, 0o755); err != nil {
		s.Error = err.Error()
		return
	}
	var u usage
	var target string
	ready := func() bool {
		p, err := spec.find(spec.mnt)
		if err != nil {
			return false
		}
		target = p
		return true
	}
	t := time.Now()
	m, err := startFUSE(ctx, spec.mnt, "", spec.env, 2*time.Minute, ready, spec.args[0], spec.args[1:]...)
	if err != nil {
		s.Error = err.Error()
		return
	}
	berr := body(&u, target)
	u.wall = time.Since(t)
	if err := m.unmount(); err != nil && berr == nil {
		berr = err
	}
	u.add(m.cmd.ProcessState)
	u.fill(s)
	if berr != nil {
		s.Error = berr.Error()
	}
}

// seqRead reads target with dd (1 MiB blocks) and returns its size.
func seqRead(ctx context.Context, u *usage, target string) (int64, error) {
	fi, err := os.Stat(target)
	if err != nil {
		return 0, fmt.Errorf("bench: %w", err)
	}
	_, err = child(ctx, u, "", nil, "dd", "if="+target, "of=/dev/null", "bs=1M")
	return fi.Size(), err
}

// randResult is a random-read measurement.
type randResult struct {
	bytes, ops    int64
	iops, meanUS  float64
	p99US         float64
	reader, notes string
}

// randRead does random 4 KiB reads of target for d: fio (psync, one job)
// when installed, else a pread loop in this process.
func randRead(ctx context.Context, u *usage, target string, d time.Duration) (randResult, error) {
	fi, err := os.Stat(target)
	if err != nil || fi.Size() < 4096 {
		return randResult{}, fmt.Errorf("bench: %s missing or too small for 4 KiB reads: %v", target, err)
	}
	if _, err := exec.LookPath("fio"); err == nil {
		// --size: fio cannot size a file on restic's FUSE mount by itself.
		// fio splits --filename at colons (restic's snapshot directories
		// have them) unless escaped; --disk_util=0: there is no block
		// device under a FUSE file to take statistics of.
		out, err := child(ctx, u, "", nil, "fio", "--name=rand4k", "--filename="+strings.ReplaceAll(target, ":", `\:`), "--readonly", "--disk_util=0",
			"--size="+strconv.FormatInt(fi.Size()/4096*4096, 10),
			"--rw=randread", "--bs=4k", "--ioengine=psync", "--numjobs=1", "--invalidate=0",
			"--runtime="+strconv.Itoa(max(1, int(d.Seconds()))), "--time_based", "--output-format=json")
		if err != nil {
			return randResult{}, err
		}
		var fr struct {
			Jobs []struct {
				Read struct {
					IOBytes int64   `json:"io_bytes"`
					TotalIO int64   `json:"total_ios"`
					IOPS    float64 `json:"iops"`
					LatNS   struct {
						Mean float64 `json:"mean"`
					} `json:"lat_ns"`
					ClatNS struct {
						Percentile map[string]float64 `json:"percentile"`
					} `json:"clat_ns"`
				} `json:"read"`
			} `json:"jobs"`
		}
		// fio may print notes before the JSON.
		if i := bytes.IndexByte(out, '{'); i > 0 {
			out = out[i:]
		}
		if err := json.Unmarshal(out, &fr); err != nil || len(fr.Jobs) == 0 {
			return randResult{}, fmt.Errorf("bench: fio output: %v", err)
		}
		j := fr.Jobs[0].Read
		return randResult{bytes: j.IOBytes, ops: j.TotalIO, iops: j.IOPS, meanUS: j.LatNS.Mean / 1e3,
			p99US: j.ClatNS.Percentile["99.000000"] / 1e3, reader: "fio randread 4k psync, 1 job"}, nil
	}
	// Fallback: pread loop; its CPU is this process's (the harness is idle
	// meanwhile).
	f, err := os.Open(target)
	if err != nil {
		return randResult{}, fmt.Errorf("bench: %w", err)
	}
	defer f.Close()
	u0, s0 := selfCPU()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 4096)
	blocks := fi.Size() / 4096
	var res randResult
	var lat []time.Duration
	t0 := time.Now()
	for time.Since(t0) < d && ctx.Err() == nil {
		t := time.Now()
		if _, err := f.ReadAt(buf, rng.Int64N(blocks)*4096); err != nil {
			return res, fmt.Errorf("bench: read %s: %w", target, err)
		}
		lat = append(lat, time.Since(t))
		res.ops++
	}
	el := time.Since(t0)
	u.wall += el
	u1, s1 := selfCPU()
	u.user += u1 - u0
	u.sys += s1 - s0
	res.bytes = res.ops * 4096
	res.iops = float64(res.ops) / el.Seconds()
	if len(lat) > 0 {
		var sum time.Duration
		for _, l := range lat {
			sum += l
		}
		res.meanUS = float64(sum.Microseconds()) / float64(len(lat))
		slices.Sort(lat)
		res.p99US = float64(lat[len(lat)*99/100].Microseconds())
	}
	res.reader = "pread loop 4k (fio not installed)"
	return res, nil
}

// ourMountSpec mounts a vmvault repository.
func (o *ours) mountSpec(find func(mnt string) (string, error)) mountSpec {
	args := []string{o.r.o.Binary, "mount", "--repo", o.repo}
	if o.cfg.knobs.CacheSize > 0 {
		args = append(args, "--cache-size", strconv.FormatInt(o.cfg.knobs.CacheSize, 10))
	}
	mnt := filepath.Join(o.r.o.WorkDir, "mnt", "vmvault")
	return mountSpec{tool: ToolVMVault, args: append(args, mnt), env: o.env, mnt: mnt, find: find}
}

// mountStage runs one of the mount stages on vm0's latest point.
func (o *ours) mountStage(ctx context.Context, stage string) {
	r := o.r
	s := o.base(stage, r.liveGen)
	s.VMs = 1
	vm := r.fleet.VMs[0].Name
	// Rates of mount stages are of the bytes read (virtual and allocated
	// bytes say nothing about a random read or a folder copy).
	existing := func(p string) (string, error) {
		if _, err := os.Stat(p); err != nil {
			return "", err
		}
		return p, nil
	}
	switch stage {
	case StageMountSeq, StageMountRand:
		spec := o.mountSpec(func(mnt string) (string, error) {
			return existing(filepath.Join(mnt, vm, "latest", "disks", vm+".vhdx"))
		})
		r.mounted(ctx, &s, spec, func(u *usage, target string) error {
			if stage == StageMountSeq {
				n, err := seqRead(ctx, u, target)
				s.Bytes = n
				s.Note = "dd bs=1M of the synthesized .vhdx"
				return err
			}
			rr, err := randRead(ctx, u, target, r.o.RandRuntime)
			s.Bytes, s.IOPS, s.LatencyMeanUS, s.LatencyP99US, s.Note = rr.bytes, rr.iops, rr.meanUS, rr.p99US, rr.reader+" of the synthesized .vhdx"
			return err
		})
	case StageItemCopy:
		dst := filepath.Join(r.o.WorkDir, "restore", "item-copy")
		os.RemoveAll(dst)
		defer os.RemoveAll(dst)
		spec := o.mountSpec(func(mnt string) (string, error) {
			return existing(filepath.Join(mnt, vm, "latest", "volumes", vm+"-p1", ItemDir))
		})
		s.Bytes, s.Files = r.fleet.ItemBytes, r.fleet.ItemFiles
		r.mounted(ctx, &s, spec, func(u *usage, target string) error {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
			_, err := child(ctx, u, "", nil, "cp", "-a", target, dst)
			return err
		})
		if s.Error == "" {
			if n, err := compareTree(filepath.Join(r.fleet.OSDir(), ItemDir), filepath.Join(dst, ItemDir)); err != nil {
				s.Error = "verify: " + err.Error()
			} else {
				s.Verified = fmt.Sprintf("vm0: %d files equal the staged source tree", n)
			}
		}
		s.Note = "cp -a of the guest folder " + ItemDir + " (NTFS) from the mount"
	default:
		s.Error = errors.New("bench: unknown mount stage").Error()
	}
	r.record(s)
}
