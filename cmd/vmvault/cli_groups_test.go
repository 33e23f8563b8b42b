package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testdisks"
	"github.com/vmvault/vmvault/internal/testenv"
)

// utc makes period rules (daily ...) independent of the machine's zone.
var utc = []string{"TZ=UTC"}

// rpIDs lists the recovery point IDs of vm, oldest first.
func rpIDs(t *testing.T, repo, vm string) []string {
	t.Helper()
	var list []map[string]any
	if err := json.Unmarshal([]byte(mustVMV(t, utc, "rp", "list", "--repo", repo, "--vm", vm, "--json")), &list); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range list {
		ids = append(ids, p["id"].(string))
	}
	return ids
}

// fakeHistory gives vm recovery points at the given ages before its one
// real recovery point: copies of that point's pointer file (same manifest
// and data) under earlier times, so retention has days of history to
// work on without days of waiting. It returns the IDs, newest first,
// the real one included.
func fakeHistory(t *testing.T, repo, vm string, ages ...time.Duration) []string {
	t.Helper()
	var list []map[string]any
	json.Unmarshal([]byte(mustVMV(t, utc, "rp", "list", "--repo", repo, "--vm", vm, "--json")), &list)
	if len(list) != 1 {
		t.Fatalf("fakeHistory wants one real point, %s has %d", vm, len(list))
	}
	dir := filepath.Join(repo, "catalog", "rps", list[0]["vm_guid"].(string))
	realID := list[0]["id"].(string)
	b, err := os.ReadFile(filepath.Join(dir, realID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	t0, _ := time.Parse("2006-01-02T150405Z", realID)
	ids := []string{realID}
	for _, age := range ages {
		var p map[string]any
		json.Unmarshal(b, &p)
		at := t0.Add(-age)
		id := at.Format("2006-01-02T150405Z")
		p["id"], p["time"], p["end_time"] = id, at, at
		nb, _ := json.MarshalIndent(p, "", "  ")
		if err := os.WriteFile(filepath.Join(dir, id+".json"), nb, 0o600); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// forgetLines maps each recovery point ID of the text output to its line.
func forgetLines(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && (f[0] == "keep" || f[0] == "forget") {
			m[f[1]] = strings.Join(f, " ")
		}
	}
	return m
}

// TestCLIGroups: group create (validated) / add / remove / list / show
// (next runs, space used, estimate) / delete, and backup --group.
func TestCLIGroups(t *testing.T) {
	td := testdisks.Dir(t)
	repo := filepath.Join(t.TempDir(), "repo")
	mustVMV(t, utc, "init", "--repo", repo)
	src := filepath.Join(td, testdisks.NoPartRaw)

	wantFail(t, vmv(t, utc, "group", "create", "p", "--repo", repo), "--retention-days is required")
	wantFail(t, vmv(t, utc, "group", "create", "p", "--repo", repo, "--retention-days", "0"), "retention range 0 days")
	wantFail(t, vmv(t, utc, "group", "create", "p", "--repo", repo, "--retention-days", "7", "--sync-frequency", "5m"), "sync frequency")
	wantFail(t, vmv(t, utc, "group", "create", "p", "--repo", repo, "--retention-days", "7", "--rp-times", "08:00,24:00"), "24:00")
	wantFail(t, vmv(t, utc, "group", "create", "p", "--repo", repo, "--retention-days", "7", "--express-full", "Someday 02:00"), "Someday")
	wantFail(t, vmv(t, utc, "group", "create", "a/b", "--repo", repo, "--retention-days", "7"), "group name")
	wantFail(t, vmv(t, utc, "backup", "-q", "--repo", repo, "--vm", "web", "--group", "prod", src), "vmvault group create prod")

	out := mustVMV(t, utc, "group", "create", "prod", "--repo", repo, "--retention-days", "3",
		"--sync-frequency", "60m", "--rp-times", "20:00,08:00", "--express-full", "Sun 02:00")
	if !strings.Contains(out, "created group prod") || !strings.Contains(out, "next sync:") || !strings.Contains(out, "next express full: Sun") {
		t.Errorf("create output:\n%s", out)
	}
	wantFail(t, vmv(t, utc, "group", "create", "prod", "--repo", repo, "--retention-days", "3"), "already exists")
	mustVMV(t, utc, "group", "create", "test", "--repo", repo, "--retention-days", "1")

	mustVMV(t, utc, "backup", "-q", "--repo", repo, "--vm", "web", "--group", "prod", src)
	mustVMV(t, utc, "backup", "-q", "--repo", repo, "--vm", "db", filepath.Join(td, testdisks.MBRRaw))
	wantFail(t, vmv(t, utc, "backup", "-q", "--repo", repo, "--vm", "web", "--group", "test", src), "is in group prod")
	wantFail(t, vmv(t, utc, "group", "add", "prod", "--repo", repo, "ghost"), "first backup")
	wantFail(t, vmv(t, utc, "group", "add", "test", "--repo", repo, "web"), "is in group prod")
	mustVMV(t, utc, "group", "add", "prod", "--repo", repo, "db")

	var list []struct {
		Name          string   `json:"name"`
		RetentionDays int      `json:"retention_days"`
		SyncFrequency string   `json:"sync_frequency"`
		RPTimes       []string `json:"rp_times"`
		Members       []string `json:"members"`
	}
	if err := json.Unmarshal([]byte(mustVMV(t, utc, "group", "list", "--repo", repo, "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "prod" || list[0].RetentionDays != 3 || list[0].SyncFrequency != "1h" ||
		strings.Join(list[0].Members, ",") != "db,web" || len(list[1].Members) != 0 {
		t.Errorf("group list: %+v", list)
	}

	// Space: used is the sum of bytes_stored and manifest_size of the
	// members' pointers, computed here from the pointer files themselves.
	fakeHistory(t, repo, "web", 24*time.Hour, 48*time.Hour)
	var want int64
	var points int
	filepath.Walk(filepath.Join(repo, "catalog", "rps"), func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		var p struct {
			BytesStored  int64 `json:"bytes_stored"`
			ManifestSize int64 `json:"manifest_size"`
		}
		b, _ := os.ReadFile(path)
		json.Unmarshal(b, &p)
		want += p.BytesStored + p.ManifestSize
		points++
		return nil
	})
	var show struct {
		Members []struct {
			Name           string `json:"name"`
			RecoveryPoints int    `json:"recovery_points"`
		} `json:"members"`
		Next []struct {
			Kind string    `json:"kind"`
			Time time.Time `json:"time"`
		} `json:"next"`
		Space struct {
			Used           int64  `json:"used"`
			RecoveryPoints int    `json:"recovery_points"`
			Counted        string `json:"counted"`
			Estimate       *struct {
				Base, DailyChange, Total int64
			} `json:"estimate"`
			EstimateError string `json:"estimate_error"`
		} `json:"space"`
	}
	before := time.Now()
	if err := json.Unmarshal([]byte(mustVMV(t, utc, "group", "show", "prod", "--repo", repo, "--json")), &show); err != nil {
		t.Fatal(err)
	}
	if len(show.Members) != 2 || show.Members[1].Name != "web" || show.Members[1].RecoveryPoints != 3 {
		t.Errorf("members %+v", show.Members)
	}
	if show.Space.Used != want || show.Space.RecoveryPoints != points || points != 4 || show.Space.Counted == "" {
		t.Errorf("space %+v, want used %d by %d points", show.Space, want, points)
	}
	if show.Space.Estimate == nil || show.Space.Estimate.Base <= 0 || show.Space.Estimate.Total < show.Space.Estimate.Base {
		t.Errorf("estimate %+v (%s)", show.Space.Estimate, show.Space.EstimateError)
	}
	if len(show.Next) != 3 || show.Next[0].Kind != "sync" || !show.Next[0].Time.After(before) || show.Next[0].Time.After(before.Add(time.Hour)) ||
		show.Next[0].Time.Minute() != 0 {
		t.Errorf("next %+v", show.Next)
	}
	text := mustVMV(t, utc, "group", "show", "prod", "--repo", repo)
	for _, w := range []string{"retention range: 3 days", "next recovery point:", "space used:", "counted:", "estimate for 3 days:", "web ("} {
		if !strings.Contains(text, w) {
			t.Errorf("group show lacks %q:\n%s", w, text)
		}
	}
	// One point only: no estimate, and it says why.
	mustVMV(t, utc, "backup", "-q", "--repo", repo, "--vm", "solo", "--group", "test", src)
	if out := mustVMV(t, utc, "group", "show", "test", "--repo", repo); !strings.Contains(out, "not enough history") {
		t.Errorf("single-point group:\n%s", out)
	}

	wantFail(t, vmv(t, utc, "group", "remove", "test", "--repo", repo, "web"), "not in group test")
	mustVMV(t, utc, "group", "remove", "prod", "--repo", repo, "db")
	wantFail(t, vmv(t, utc, "group", "delete", "prod", "--repo", repo), "--force")
	wantFail(t, vmv(t, utc, "group", "show", "nope", "--repo", repo), "unknown protection group")
	out = mustVMV(t, utc, "group", "delete", "prod", "--repo", repo, "--force")
	if !strings.Contains(out, "removed web from prod") {
		t.Errorf("delete --force: %s", out)
	}
	json.Unmarshal([]byte(mustVMV(t, utc, "group", "list", "--repo", repo, "--json")), &list)
	if len(list) != 1 || list[0].Name != "test" {
		t.Errorf("after delete: %+v", list)
	}
	// The web points stay, and web can join another group now.
	if ids := rpIDs(t, repo, "web"); len(ids) != 3 {
		t.Errorf("group delete touched recovery points: %v", ids)
	}
	mustVMV(t, utc, "group", "add", "test", "--repo", repo, "web")
	fi, err := os.Stat(filepath.Join(repo, "catalog", "groups", "test.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("group file %v %v", fi, err)
	}
}

// TestCLIForgetRetention: forget by a group's retention range (via
// --group and via a member VM), by keep flags, by explicit IDs; dry runs
// change nothing and give reasons; every run leaves a job record.
func TestCLIForgetRetention(t *testing.T) {
	td := testdisks.Dir(t)
	repo := filepath.Join(t.TempDir(), "repo")
	mustVMV(t, utc, "init", "--repo", repo)
	src := filepath.Join(td, testdisks.NoPartRaw)
	mustVMV(t, utc, "group", "create", "prod", "--repo", repo, "--retention-days", "3")
	mustVMV(t, utc, "backup", "-q", "--repo", repo, "--vm", "a", "--group", "prod", src)
	mustVMV(t, utc, "backup", "-q", "--repo", repo, "--vm", "b", filepath.Join(td, testdisks.MBRRaw))
	const day = 24 * time.Hour
	a := fakeHistory(t, repo, "a", 1*day, 2*day, 3*day, 5*day, 10*day)
	b := fakeHistory(t, repo, "b", time.Hour, 1*day, 2*day, 3*day+time.Hour, 9*day)

	// Group retention, dry run: points younger than 3 days before the
	// newest are kept ("retention 3d"); exactly 3 days is not younger.
	out := mustVMV(t, utc, "forget", "--repo", repo, "--group", "prod", "--dry-run")
	lines := forgetLines(out)
	for i, id := range a {
		want := "keep " + id + " retention 3d"
		if i >= 3 {
			want = "forget " + id + " no rule keeps it"
		}
		if lines[id] != want {
			t.Errorf("dry run: %q, want %q\n%s", lines[id], want, out)
		}
	}
	if !strings.Contains(out, "from group prod") || !strings.Contains(out, "would forget 3 recovery points, kept 3") {
		t.Errorf("dry run output:\n%s", out)
	}
	if ids := rpIDs(t, repo, "a"); len(ids) != 6 {
		t.Fatalf("dry run forgot: %v", ids)
	}
	// A VM in no group, no flags: nothing to do is an error, not a no-op.
	wantFail(t, vmv(t, utc, "forget", "--repo", repo, "--vm", "b"), "nothing to forget")
	wantFail(t, vmv(t, utc, "forget", "--repo", repo, "--vm", "a", "--keep-within", "3mo"), "months")
	wantFail(t, vmv(t, utc, "forget", "--repo", repo, "--vm", "a", "--keep-last", "-5"), "keep-last")
	wantFail(t, vmv(t, utc, "forget", "--repo", repo, "--group", "nope"), "unknown protection group")

	// The member VM alone, no flags: its group's range.
	mustVMV(t, utc, "forget", "--repo", repo, "--vm", "a")
	got := rpIDs(t, repo, "a")
	sort.Sort(sort.Reverse(sort.StringSlice(got)))
	if strings.Join(got, " ") != strings.Join(a[:3], " ") {
		t.Errorf("after group forget: %v, want %v", got, a[:3])
	}

	// Keep flags on b (newest first: b0, b0-1h, b0-1d, b0-2d, b0-3d1h,
	// b0-9d): keep-last 1 keeps b0; keep-daily 3 keeps the newest of the
	// three newest days: b0, b0-1d, b0-2d (b0-1h shares b0's day, unless
	// b0 is within an hour after midnight: then b0-1h is the newest of the
	// day before, and b0-1d falls in that day too).
	var rep struct {
		DryRun bool `json:"dry_run"`
		VMs    []struct {
			PolicyFrom string `json:"policy_from"`
			Keep       []struct {
				ID      string   `json:"id"`
				Reasons []string `json:"reasons"`
			} `json:"keep"`
			Forget []struct {
				ID string `json:"id"`
			} `json:"forget"`
		} `json:"vms"`
	}
	if err := json.Unmarshal([]byte(mustVMV(t, utc, "forget", "--repo", repo, "--vm", "b", "--keep-last", "1", "--keep-daily", "3", "--dry-run", "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	b0, _ := time.Parse("2006-01-02T150405Z", b[0])
	sameDay := b0.Add(-time.Hour).Day() == b0.Day()
	wantKeep := []string{b[0], b[2], b[3]}
	if !sameDay {
		wantKeep = []string{b[0], b[1], b[3]}
	}
	var kept []string
	for _, k := range rep.VMs[0].Keep {
		kept = append(kept, k.ID)
	}
	if !rep.DryRun || rep.VMs[0].PolicyFrom != "flags" || strings.Join(kept, " ") != strings.Join(wantKeep, " ") ||
		strings.Join(rep.VMs[0].Keep[0].Reasons, ",") != "last,daily "+b0.Format("2006-01-02") {
		t.Errorf("keep flags: %+v, want kept %v", rep, wantKeep)
	}
	mustVMV(t, utc, "forget", "--repo", repo, "--vm", "b", "--keep-last", "1", "--keep-daily", "3")
	got = rpIDs(t, repo, "b")
	sort.Sort(sort.Reverse(sort.StringSlice(got)))
	if strings.Join(got, " ") != strings.Join(wantKeep, " ") {
		t.Errorf("after keep flags: %v, want %v", got, wantKeep)
	}
	// --keep-within counts back from the newest point.
	out = mustVMV(t, utc, "forget", "--repo", repo, "--vm", "b", "--keep-within", "1d12h")
	if ids := rpIDs(t, repo, "b"); len(ids) != 2 || !strings.Contains(out, "within 1d12h") {
		t.Errorf("keep-within 1d12h left %v\n%s", ids, out)
	}
	// Explicit IDs: exactly those, even the newest.
	mustVMV(t, utc, "forget", "--repo", repo, "--vm", "b", b[0])
	if ids := rpIDs(t, repo, "b"); len(ids) != 1 || ids[0] == b[0] {
		t.Errorf("explicit forget left %v", ids)
	}
	wantFail(t, vmv(t, utc, "forget", "--repo", repo, "--vm", "b", "2001-01-01T000000Z"), "unknown recovery point")

	mustVMV(t, utc, "prune", "--repo", repo)
	mustVMV(t, utc, "check", "--repo", repo)

	var jobs []struct {
		Kind      string   `json:"kind"`
		Result    string   `json:"result"`
		DryRun    bool     `json:"dry_run"`
		Group     string   `json:"group"`
		Forgotten []string `json:"forgotten"`
	}
	json.Unmarshal([]byte(mustVMV(t, utc, "jobs", "--repo", repo, "--json")), &jobs)
	var kinds []string
	for _, j := range jobs {
		k := j.Kind + ":" + j.Result
		if j.DryRun {
			k += ":dry"
		}
		kinds = append(kinds, k)
	}
	// backup a, backup b, forget --group (dry), --vm b (failed), --group nope
	// (failed), --vm a, b dry, b, b within, b explicit, b unknown ID
	// (failed), prune, check. Flag errors fail before any job starts.
	want := "backup:ok backup:ok forget:ok:dry forget:failed forget:failed forget:ok forget:ok:dry forget:ok forget:ok forget:ok forget:failed prune:ok check:ok"
	if strings.Join(kinds, " ") != want {
		t.Errorf("jobs:\n%s\nwant\n%s", strings.Join(kinds, " "), want)
	}
	if len(jobs) > 2 && (jobs[2].Group != "prod" || len(jobs[2].Forgotten) != 3 || !strings.HasPrefix(jobs[2].Forgotten[0], "a/")) {
		t.Errorf("dry-run forget job: %+v", jobs[2])
	}
}

// pagefileImage writes a copy of gpt.raw whose NTFS partition holds a
// 3 MiB pagefile.sys of random content (ntfscp) and returns its path, its
// bytes, and the bytes a backup that leaves the page file out restores:
// every 4 KiB block holding page file content zeroed.
func pagefileImage(t *testing.T, dir string) (string, []byte, []byte) {
	t.Helper()
	testenv.NeedTools(t, "ntfscp")
	td := testdisks.Dir(t)
	image, err := os.ReadFile(filepath.Join(td, testdisks.GPTRaw))
	if err != nil {
		t.Fatal(err)
	}
	const partStart, partLen = 83968 * 512, 163840 * 512 // NTFSVOL, testdisks.Partitions
	part := filepath.Join(dir, "part.img")
	os.WriteFile(part, image[partStart:partStart+partLen], 0o644)
	pf := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(11, 12))
	for i := range pf {
		pf[i] = byte(rng.Uint32())
	}
	pfPath := filepath.Join(dir, "pf")
	os.WriteFile(pfPath, pf, 0o644)
	toolOut(t, "ntfscp", "-f", part, pfPath, "pagefile.sys")
	pb, _ := os.ReadFile(part)
	copy(image[partStart:], pb)
	img := filepath.Join(dir, "win.raw")
	if err := os.WriteFile(img, image, 0o644); err != nil {
		t.Fatal(err)
	}
	blocks := map[[32]byte]bool{}
	for i := 0; i < len(pf); i += 4096 {
		blocks[sha256.Sum256(pf[i:i+4096])] = true
	}
	want := bytes.Clone(image)
	n := 0
	for off := 0; off+4096 <= len(want); off += 4096 {
		if blocks[sha256.Sum256(want[off:off+4096])] {
			clear(want[off : off+4096])
			n++
		}
	}
	if n != len(pf)/4096 {
		t.Fatalf("found %d page file blocks in the image, want %d", n, len(pf)/4096)
	}
	return img, image, want
}

// TestCLIPagefile: page files are left out by default (listed by rp show,
// restored as zeros, everything else exact); --keep-pagefile restores the
// source exactly.
func TestCLIPagefile(t *testing.T) {
	dir := t.TempDir()
	img, image, want := pagefileImage(t, dir)
	repo := filepath.Join(dir, "repo")
	mustVMV(t, nil, "init", "--repo", repo)

	out := mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "win", img)
	if !strings.Contains(out, "left out p2/pagefile.sys") {
		t.Errorf("backup summary does not name the page file:\n%s", out)
	}
	var show struct {
		DiskDetails []struct {
			ExcludedFiles []struct {
				Volume        int    `json:"volume"`
				Path          string `json:"path"`
				Size          int64  `json:"size"`
				BytesExcluded int64  `json:"bytes_excluded"`
			} `json:"excluded_files"`
		} `json:"disk_details"`
	}
	if err := json.Unmarshal([]byte(mustVMV(t, nil, "rp", "show", "--repo", repo, "--vm", "win", "--json")), &show); err != nil {
		t.Fatal(err)
	}
	if ex := show.DiskDetails[0].ExcludedFiles; len(ex) != 1 || ex[0].Volume != 2 || !strings.EqualFold(ex[0].Path, "pagefile.sys") ||
		ex[0].Size != 3<<20 || ex[0].BytesExcluded < 3<<20 {
		t.Errorf("rp show excluded_files: %+v", ex)
	}
	if text := mustVMV(t, nil, "rp", "show", "--repo", repo, "--vm", "win"); !strings.Contains(text, "left out (restores as zeros): volume p2 pagefile.sys") {
		t.Errorf("rp show text:\n%s", text)
	}
	outDir := filepath.Join(dir, "out1")
	mustVMV(t, nil, "restore", "-q", "--repo", repo, "--vm", "win", "--to", outDir, "--format", "raw")
	if got, _ := os.ReadFile(filepath.Join(outDir, "win.raw")); !bytes.Equal(got, want) {
		t.Error("default restore: not the source with the page file's blocks zeroed")
	}

	// A disk whose partition table cannot be read: backed up whole, the
	// reason on stderr even with -q, exit 0.
	broken := filepath.Join(dir, "broken.raw")
	bb := bytes.Clone(image)
	clear(bb[512:1024])     // primary GPT header
	clear(bb[len(bb)-512:]) // backup GPT header
	os.WriteFile(broken, bb, 0o644)
	if r := vmv(t, nil, "backup", "-q", "--repo", repo, "--vm", "broken", broken); r.code != 0 ||
		!strings.Contains(r.stderr, "warning: broken: page files not looked for") {
		t.Errorf("backup of a disk with an unreadable table: exit %d, stderr %q", r.code, r.stderr)
	}

	mustVMV(t, nil, "backup", "-q", "--repo", repo, "--vm", "win", "--keep-pagefile", img)
	show.DiskDetails = nil
	json.Unmarshal([]byte(mustVMV(t, nil, "rp", "show", "--repo", repo, "--vm", "win", "--json")), &show)
	if ex := show.DiskDetails[0].ExcludedFiles; len(ex) != 0 {
		t.Errorf("--keep-pagefile still excluded %+v", ex)
	}
	outDir = filepath.Join(dir, "out2")
	mustVMV(t, nil, "restore", "-q", "--repo", repo, "--vm", "win", "--to", outDir, "--format", "raw")
	if got, _ := os.ReadFile(filepath.Join(outDir, "win.raw")); !bytes.Equal(got, image) {
		t.Error("--keep-pagefile restore differs from the source")
	}
}

// TestCLIHelpTeaches: every new command explains itself with an example.
func TestCLIHelpTeaches(t *testing.T) {
	for _, c := range [][]string{{"group"}, {"group", "create"}, {"group", "add"}, {"group", "remove"}, {"group", "list"},
		{"group", "show"}, {"group", "delete"}, {"group", "sources"}, {"forget"}, {"backup"}, {"prune"}, {"jobs"}, {"rp", "show"}} {
		out := mustVMV(t, nil, append(c, "--help")...)
		if !strings.Contains(out, "Examples:") || !strings.Contains(out, "vmvault "+c[0]) || len(out) < 400 {
			t.Errorf("%s --help:\n%s", strings.Join(c, " "), out)
		}
	}
	if out := mustVMV(t, nil, "backup", "--help"); !strings.Contains(out, "--keep-pagefile") || strings.Contains(out, "--exclude-pagefile") {
		t.Errorf("backup --help page file flags:\n%s", out)
	}
}

// schedMember is one member of `schedule run --dry-run --json`.
type schedMember struct {
	VM           string   `json:"vm"`
	Sources      []string `json:"sources"`
	SourcesFrom  string   `json:"sources_from"`
	SourcesError string   `json:"sources_error"`
}

// dryRunMember runs `schedule run --dry-run --json` and returns vm's entry.
func dryRunMember(t *testing.T, repo, vm string) schedMember {
	t.Helper()
	var p struct {
		Members []schedMember `json:"members"`
	}
	if err := json.Unmarshal([]byte(mustVMV(t, utc, "schedule", "run", "--repo", repo, "--dry-run", "--json")), &p); err != nil {
		t.Fatal(err)
	}
	for _, m := range p.Members {
		if m.VM == vm {
			return m
		}
	}
	t.Fatalf("%s not in the plan: %+v", vm, p.Members)
	return schedMember{}
}

// TestCLIGroupSources: `group sources` shows where the scheduler takes a
// VM's sources from, sets an override (a relative path made absolute
// against the caller's directory) that `schedule run` uses in its dry
// run and in a real pass, and --clear goes back to the latest recovery
// point's. Bad input fails with one line and changes nothing.
func TestCLIGroupSources(t *testing.T) {
	td := testdisks.Dir(t)
	repo := filepath.Join(t.TempDir(), "repo")
	mustVMV(t, utc, "init", "--repo", repo)
	mustVMV(t, utc, "group", "create", "prod", "--repo", repo, "--retention-days", "30", "--sync-frequency", "24h")
	disk1 := filepath.Join(td, testdisks.NoPartRaw)
	disk2 := filepath.Join(td, testdisks.MBRRaw)
	mustVMV(t, utc, "backup", "-q", "--repo", repo, "--vm", "web", "--group", "prod", disk1)
	first := rpIDs(t, repo, "web")[0]

	out := mustVMV(t, utc, "group", "sources", "--repo", repo, "web")
	if !strings.Contains(out, "sources of its latest recovery point "+first) || !strings.Contains(out, "  "+disk1+"\n") {
		t.Errorf("show without override:\n%s", out)
	}
	var sv struct {
		VM          string   `json:"vm"`
		Group       string   `json:"group"`
		Sources     []string `json:"sources"`
		SourcesFrom string   `json:"sources_from"`
		RP          string   `json:"rp"`
	}
	json.Unmarshal([]byte(mustVMV(t, utc, "group", "sources", "--repo", repo, "web", "--json")), &sv)
	if sv.SourcesFrom != "latest-rp" || sv.RP != first || len(sv.Sources) != 1 || sv.Sources[0] != disk1 || sv.Group != "prod" {
		t.Errorf("show --json without override: %+v", sv)
	}

	wantFail(t, vmv(t, utc, "group", "sources", "--repo", repo, "ghost", disk2), "unknown VM")
	wantFail(t, vmv(t, utc, "group", "sources", "--repo", repo, "web", "--clear", disk2), "not both")
	wantFail(t, vmv(t, utc, "group", "sources", "--repo", repo, "web", ""), "empty path")
	wantFail(t, vmv(t, utc, "group", "sources", "--repo", repo), "give the VM")
	wantFail(t, vmv(t, utc, "group", "sources", "web", disk2), "--repo is required")
	if m := dryRunMember(t, repo, "web"); m.SourcesFrom != "latest-rp" || len(m.Sources) != 1 || m.Sources[0] != disk1 {
		t.Errorf("refused sets changed the plan: %+v", m)
	}

	// Relative to the directory vmvault runs in (the test's).
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, disk2)
	if err != nil || filepath.IsAbs(rel) {
		t.Fatalf("no relative path to %s from %s: %v", disk2, wd, err)
	}
	out = mustVMV(t, utc, "group", "sources", "--repo", repo, "web", rel)
	if !strings.Contains(out, "set the sources of web") || !strings.Contains(out, "  "+disk2+"\n") {
		t.Errorf("set:\n%s", out)
	}
	m := dryRunMember(t, repo, "web")
	if m.SourcesFrom != "vm" || len(m.Sources) != 1 || m.Sources[0] != disk2 {
		t.Errorf("dry run with the override: %+v", m)
	}
	if dry := mustVMV(t, utc, "schedule", "run", "--repo", repo, "--dry-run"); !strings.Contains(dry, "sources set for it (vmvault group sources): "+disk2) {
		t.Errorf("dry run text:\n%s", dry)
	}
	if out := mustVMV(t, utc, "group", "sources", "--repo", repo, "web"); !strings.Contains(out, "sources set for it") || !strings.Contains(out, disk2) {
		t.Errorf("show with override:\n%s", out)
	}

	// A missing path is stored, with a warning (the VM may be moving).
	missing := filepath.Join(t.TempDir(), "later.vhdx")
	r := vmv(t, utc, "group", "sources", "--repo", repo, "web", missing)
	if r.code != 0 || !strings.Contains(r.stderr, "warning: "+missing+" does not exist now") {
		t.Errorf("set a missing path: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	if out := mustVMV(t, utc, "group", "sources", "--repo", repo, "web", "--clear"); !strings.Contains(out, "cleared the sources of web") {
		t.Errorf("clear:\n%s", out)
	}
	if m := dryRunMember(t, repo, "web"); m.SourcesFrom != "latest-rp" || len(m.Sources) != 1 || m.Sources[0] != disk1 {
		t.Errorf("dry run after clear: %+v", m)
	}

	// A real pass backs up from the override.
	var rec struct {
		Sources []string `json:"sources"`
	}
	json.Unmarshal([]byte(mustVMV(t, utc, "group", "sources", "--repo", repo, "web", disk2, "--json")), &rec)
	if len(rec.Sources) != 1 || rec.Sources[0] != disk2 {
		t.Errorf("set --json: %+v", rec)
	}
	agePoint(t, repo, "web", 72*time.Hour)
	var rep struct {
		Runs []struct {
			Result, RP  string
			SourcesFrom string   `json:"sources_from"`
			Sources     []string `json:"sources"`
		} `json:"runs"`
	}
	if err := json.Unmarshal([]byte(mustVMV(t, utc, "schedule", "run", "--repo", repo, "--once", "-q", "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 || rep.Runs[0].Result != "ok" || rep.Runs[0].SourcesFrom != "vm" || len(rep.Runs[0].Sources) != 1 || rep.Runs[0].Sources[0] != disk2 {
		t.Fatalf("scheduled pass: %+v", rep.Runs)
	}
	var show struct {
		Sources []string `json:"sources"`
	}
	json.Unmarshal([]byte(mustVMV(t, utc, "rp", "show", "--repo", repo, "--vm", "web", "--rp", rep.Runs[0].RP, "--json")), &show)
	if len(show.Sources) != 1 || show.Sources[0] != disk2 {
		t.Errorf("the scheduled point was made from %q, want %s", show.Sources, disk2)
	}
}
