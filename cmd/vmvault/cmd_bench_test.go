package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/bench"
	"github.com/vmvault/vmvault/internal/testenv"
)

// TestBenchSmoke runs `vmvault bench` on one tiny VM (256 MiB, one churn
// generation, no peers): every stage must be in the JSON with real figures,
// and the chart must be written. Then, independently of the harness, the
// fleet's last image goes through backup (page files kept) and raw restore,
// and the restored raw must hash like qemu-img's raw conversion of the
// source.
func TestBenchSmoke(t *testing.T) {
	// fio is optional: without it the random reads are a pread loop.
	testenv.NeedTools(t, append(bench.FleetTools, "dd", "cp")...)
	testenv.NeedFUSE(t)
	work := t.TempDir()
	js := filepath.Join(work, "bench.json")
	svg := filepath.Join(work, "bench.svg")
	res := vmv(t, nil, "bench", "--vms", "1", "--size", "256M", "--generations", "1", "--peers", "none",
		"--rand-runtime", "1s", "--workdir", filepath.Join(work, "w"), "--json", js, "--chart", svg)
	if res.code != 0 {
		t.Fatalf("bench exit %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
	for _, s := range []string{"full", "incr g1", "restore-raw", "mount-rand", "item-copy", "check"} {
		if !strings.Contains(res.stdout, s) {
			t.Errorf("table lacks %q:\n%s", s, res.stdout)
		}
	}
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	got := map[string]bench.StageResult{}
	for _, s := range rep.Stages {
		if s.Error != "" {
			t.Errorf("stage %s failed: %s", s.Stage, s.Error)
		}
		got[s.Stage] = s
		if s.WallSeconds <= 0 || s.CPUSeconds <= 0 || s.PeakRSSBytes <= 0 || s.Bytes <= 0 || s.MBs <= 0 {
			t.Errorf("stage %s has empty figures: %+v", s.Stage, s)
		}
	}
	for _, st := range bench.AllStages {
		if _, ok := got[st]; !ok {
			t.Errorf("stage %s missing from the JSON", st)
		}
	}
	for _, st := range []string{bench.StageFull, bench.StageIncr} {
		if s := got[st]; s.StoredBytes <= 0 || s.StoredParityBytes <= s.StoredBytes || s.DedupRatio <= 0 || s.VirtualBytes != 256<<20 {
			t.Errorf("%s: stored %d, with parity %d, dedup %.2f, virtual %d", st, s.StoredBytes, s.StoredParityBytes, s.DedupRatio, s.VirtualBytes)
		}
	}
	for _, st := range []string{bench.StageRestoreVHDX, bench.StageRestoreRaw, bench.StageItemCopy} {
		if got[st].Verified == "" {
			t.Errorf("%s not verified", st)
		}
	}
	if s := got[bench.StageMountRand]; s.IOPS <= 0 {
		t.Errorf("mount-rand IOPS %v", s.IOPS)
	}
	if rep.Machine.Cores == 0 || rep.Machine.CPUModel == "" || rep.Fleet == nil || len(rep.Fleet.VMs) != 1 {
		t.Errorf("machine %+v fleet %+v", rep.Machine, rep.Fleet)
	}
	if fi, err := os.Stat(svg); err != nil || fi.Size() < 500 {
		t.Errorf("chart: %v", err)
	}

	// Round trip outside the harness: the last image, page files kept.
	imgs, _ := filepath.Glob(filepath.Join(work, "w", "cache", "fleet-*", "vm0", "gen1", "vm0.vhdx"))
	if len(imgs) != 1 {
		t.Fatalf("fleet image not found: %v", imgs)
	}
	repo := filepath.Join(work, "repo")
	for _, args := range [][]string{
		{"init", "--repo", repo},
		{"backup", "-q", "--repo", repo, "--vm", "vm0", "--keep-pagefile", imgs[0]},
		{"restore", "-q", "--repo", repo, "--vm", "vm0", "--to", filepath.Join(work, "out"), "--format", "raw"},
	} {
		if r := vmv(t, nil, args...); r.code != 0 {
			t.Fatalf("%s: %s", args[0], r.stderr)
		}
	}
	srcRaw := filepath.Join(work, "src.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", "vhdx", "-O", "raw", imgs[0], srcRaw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v %s", err, out)
	}
	restored, _ := filepath.Glob(filepath.Join(work, "out", "*.raw"))
	if len(restored) != 1 {
		t.Fatalf("restored raw: %v", restored)
	}
	if a, b := sha256File(t, srcRaw), sha256File(t, restored[0]); a != b {
		t.Errorf("restored raw sha256 %s, source %s", b, a)
	}
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
