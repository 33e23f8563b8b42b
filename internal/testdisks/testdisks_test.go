package testdisks

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
)

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr)
	}
	return out
}

func TestParseManifest(t *testing.T) {
	in := "image\tpart\tkind\tpath\tsize\tsha256\ttarget\n" +
		"gpt.vhdx\t3\tl\tlink\t9\t\thello.txt\n" +
		"gpt.vhdx\t2\tf\tdir/a b.txt\t3\tabc\t\n"
	es, err := ParseManifest(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{{"gpt.vhdx", 3, 'l', "link", 9, "", "hello.txt"}, {"gpt.vhdx", 2, 'f', "dir/a b.txt", 3, "abc", ""}}
	if fmt.Sprint(es) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", es, want)
	}
	for _, bad := range []string{"", "x\n", "image\tpart\tkind\tpath\tsize\tsha256\ttarget\ng\t1\tf\tp\n",
		"image\tpart\tkind\tpath\tsize\tsha256\ttarget\ng\tX\tf\tp\t1\t\t\n",
		"image\tpart\tkind\tpath\tsize\tsha256\ttarget\ng\t1\tq\tp\t1\t\t\n"} {
		if es, err := ParseManifest(strings.NewReader(bad)); err == nil && len(es) > 0 {
			t.Errorf("ParseManifest(%q) accepted", bad)
		}
	}
}

func TestFilesAndDir(t *testing.T) {
	d := Dir(t)
	if d2 := Dir(t); d2 != d {
		t.Fatalf("Dir changed: %s then %s", d, d2)
	}
	for _, n := range []string{GPTVHDX, GPTRaw, MBRVHDX, MBRRaw, NoPartRaw, DirtyVHDX, DirtyExpectedRaw,
		BaseVHDX, BaseRaw, ChildAVHDX, ChildExpectedRaw, OrphanAVHDX, BadLinkAVHDX, ManifestTSV, ".complete"} {
		if _, err := os.Stat(filepath.Join(d, n)); err != nil {
			t.Error(err)
		}
	}
	for _, im := range Images {
		for _, n := range []string{im.Raw} {
			st, err := os.Stat(filepath.Join(d, n))
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() != im.VirtualSize {
				t.Errorf("%s: size %d, want %d", n, st.Size(), im.VirtualSize)
			}
		}
	}
	// nopart.raw must be sparse: SEEK_HOLE finds a hole before EOF.
	f, err := os.Open(filepath.Join(d, NoPartRaw))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const seekHole = 4
	if h, err := f.Seek(0, seekHole); err != nil || h >= 64<<20 {
		t.Errorf("nopart.raw: SEEK_HOLE = %d, %v; want a hole", h, err)
	}
}

type qemuInfo struct {
	VirtualSize int64  `json:"virtual-size"`
	ClusterSize int64  `json:"cluster-size"`
	Format      string `json:"format"`
}

func TestQemu(t *testing.T) {
	testenv.NeedTools(t, "qemu-img")
	d := Dir(t)
	for _, im := range Images {
		if im.Format != "vhdx" || im.Name == DirtyVHDX || im.Name == ChildAVHDX {
			continue
		}
		p := filepath.Join(d, im.Name)
		run(t, "qemu-img", "check", "-q", p)
		var qi qemuInfo
		if err := json.Unmarshal(run(t, "qemu-img", "info", "--output=json", p), &qi); err != nil {
			t.Fatal(err)
		}
		if qi.Format != "vhdx" || qi.VirtualSize != im.VirtualSize || qi.ClusterSize != int64(im.BlockSize) {
			t.Errorf("%s: qemu-img info %+v, want %+v", im.Name, qi, im)
		}
		run(t, "qemu-img", "compare", "-q", "-f", "vhdx", "-F", "raw", p, filepath.Join(d, im.Raw))
	}

	// dirty.vhdx: a read-only open must refuse (log needs replay); a replay
	// on a copy must give dirty.expected.raw, which is not all zeros.
	out, err := exec.Command("qemu-img", "info", filepath.Join(d, DirtyVHDX)).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("replay")) {
		t.Errorf("qemu-img info dirty.vhdx: err=%v, out=%s; want a refusal mentioning replay", err, out)
	}
	cp := filepath.Join(t.TempDir(), "dirty.vhdx")
	b, err := os.ReadFile(filepath.Join(d, DirtyVHDX))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	exec.Command("qemu-img", "check", "-r", "all", cp).Run() // exit status reports the repaired "corruption"
	run(t, "qemu-img", "check", "-q", cp)
	run(t, "qemu-img", "compare", "-q", "-f", "vhdx", "-F", "raw", cp, filepath.Join(d, DirtyExpectedRaw))
	exp, err := os.ReadFile(filepath.Join(d, DirtyExpectedRaw))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(exp, []byte{0}) == len(exp) {
		t.Error("dirty.expected.raw is all zeros: the log would not matter")
	}
}

var vhdiField = regexp.MustCompile(`(?m)^\s*([A-Za-z ]+?)\s*:\s*(.*)$`)

func vhdiinfo(t *testing.T, path string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, sm := range vhdiField.FindAllStringSubmatch(string(run(t, "vhdiinfo", path)), -1) {
		m[sm[1]] = strings.TrimSpace(sm[2])
	}
	return m
}

func TestVhdiinfo(t *testing.T) {
	testenv.NeedTools(t, "vhdiinfo")
	d := Dir(t)
	types := map[string]string{GPTVHDX: "Dynamic", MBRVHDX: "Fixed", BaseVHDX: "Dynamic", DirtyVHDX: "Dynamic",
		ChildAVHDX: "Differential", OrphanAVHDX: "Differential", BadLinkAVHDX: "Differential"}
	info := map[string]map[string]string{}
	for n, typ := range types {
		m := vhdiinfo(t, filepath.Join(d, n))
		info[n] = m
		if m["Disk type"] != typ {
			t.Errorf("%s: disk type %q, want %q", n, m["Disk type"], typ)
		}
		if m["Bytes per sector"] != "512 bytes" {
			t.Errorf("%s: bytes per sector %q", n, m["Bytes per sector"])
		}
	}
	baseID := info[BaseVHDX]["Identifier"]
	if baseID == "" {
		t.Fatal("vhdiinfo base.vhdx: no identifier")
	}
	for n, want := range map[string]string{ChildAVHDX: baseID, OrphanAVHDX: baseID, BadLinkAVHDX: BadLinkParentLinkID} {
		if got := info[n]["Parent identifier"]; !strings.EqualFold(got, want) {
			t.Errorf("%s: parent identifier %q, want %q", n, got, want)
		}
		if !strings.Contains(info[n]["Media size"], "(9961472 bytes)") {
			t.Errorf("%s: media size %q", n, info[n]["Media size"])
		}
	}
	if _, err := os.Stat(filepath.Join(d, "missing-parent.vhdx")); err == nil {
		t.Error("orphan's parent exists")
	}
}

// TestChildExpected checks that child.expected.raw follows ChildBlockStates
// relative to base.raw, i.e. that the fixture exercises what it claims.
func TestChildExpected(t *testing.T) {
	d := Dir(t)
	base, err := os.ReadFile(filepath.Join(d, BaseRaw))
	if err != nil {
		t.Fatal(err)
	}
	child, err := os.ReadFile(filepath.Join(d, ChildExpectedRaw))
	if err != nil {
		t.Fatal(err)
	}
	if len(base) != len(child) || len(child) != 19<<19 {
		t.Fatalf("sizes %d, %d", len(base), len(child))
	}
	const bs, ss = 1 << 20, 512
	zero := make([]byte, ss)
	for b, st := range ChildBlockStates {
		var same, diff, zeros int
		for off := b * bs; off < min((b+1)*bs, len(child)); off += ss {
			c, p := child[off:off+ss], base[off:off+ss]
			switch {
			case bytes.Equal(c, zero):
				zeros++
			case bytes.Equal(c, p):
				same++
			default:
				diff++
			}
		}
		baseZero := b == 8 // base block 8 is all zeros
		ok := false
		switch st {
		case 6:
			ok = same == 0 && zeros == 0 && diff > 0
		case 7:
			ok = same > 0 && diff > 0 && zeros == 0
		case 0:
			ok = diff == 0 && (same > 0 || baseZero)
		case 2:
			ok = same == 0 && diff == 0 && zeros > 0
		}
		if !ok {
			t.Errorf("block %d state %d: %d sectors = base, %d differ, %d zero", b, st, same, diff, zeros)
		}
	}
}

func TestPartitionTables(t *testing.T) {
	testenv.NeedTools(t, "sfdisk")
	d := Dir(t)
	type sfPart struct {
		Node  string `json:"node"`
		Start int64  `json:"start"`
		Size  int64  `json:"size"`
		Type  string `json:"type"`
	}
	var pt struct {
		PartitionTable struct {
			Label      string   `json:"label"`
			Partitions []sfPart `json:"partitions"`
		} `json:"partitiontable"`
	}
	for img, raw := range map[string]string{GPTVHDX: GPTRaw, MBRVHDX: MBRRaw} {
		if err := json.Unmarshal(run(t, "sfdisk", "-J", filepath.Join(d, raw)), &pt); err != nil {
			t.Fatal(err)
		}
		got := map[string]sfPart{}
		for _, p := range pt.PartitionTable.Partitions {
			got[p.Node[len(p.Node)-1:]] = p // single-digit partition numbers
		}
		n := 0
		for _, p := range Partitions {
			if p.Image != img {
				continue
			}
			n++
			g, ok := got[fmt.Sprint(p.Num)]
			if !ok {
				t.Errorf("%s: partition %d missing (sfdisk: %+v)", raw, p.Num, pt)
				continue
			}
			typ := g.Type
			if pt.PartitionTable.Label == "dos" {
				typ = "0x" + fmt.Sprintf("%02s", typ)
			}
			if g.Start != p.Start || g.Size != p.Sectors || !strings.EqualFold(typ, p.Type) {
				t.Errorf("%s p%d: sfdisk start %d size %d type %s, want %+v", raw, p.Num, g.Start, g.Size, typ, p)
			}
		}
		if n != len(got) {
			t.Errorf("%s: sfdisk lists %d partitions, Partitions %d", raw, len(got), n)
		}
	}
}

var flsLine = regexp.MustCompile(`^(\S)/(\S) (\* )?([0-9-]+)(\(realloc\))?:\t(.*)$`)

type flsEntry struct {
	kind  byte // 'r', 'd', 'l', ...
	inode string
}

func fls(t *testing.T, args ...string) map[string]flsEntry {
	t.Helper()
	m := map[string]flsEntry{}
	for _, line := range strings.Split(strings.TrimRight(string(run(t, "fls", append([]string{"-r", "-p"}, args...)...)), "\n"), "\n") {
		sm := flsLine.FindStringSubmatch(line)
		if sm == nil {
			t.Fatalf("fls %v: unparsed line %q", args, line)
		}
		if sm[3] != "" || strings.HasSuffix(sm[6], "(Volume Label Entry)") {
			continue // deleted, or FAT's label pseudo entry
		}
		m[sm[6]] = flsEntry{sm[2][0], sm[4]}
	}
	return m
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// TestSleuthkit reads every volume with sleuthkit (from the raw oracles, and
// the GPT one also through libvhdi from the VHDX) and compares it with the
// manifest both ways: every manifest entry exists with the right kind, size
// and content, and every name on the volume is in the manifest.
func TestSleuthkit(t *testing.T) {
	testenv.NeedTools(t, "fls", "icat", "istat")
	d := Dir(t)
	man := Manifest(t)
	if len(man) < 60 {
		t.Fatalf("manifest has only %d entries", len(man))
	}
	raws := map[string]string{}
	for _, im := range Images {
		raws[im.Name] = im.Raw
	}
	type vol struct {
		image string
		part  int
		args  []string
	}
	var vols []vol
	for _, p := range Partitions {
		if p.FS == "" {
			continue
		}
		vols = append(vols, vol{p.Image, p.Num, []string{"-o", fmt.Sprint(p.Start), filepath.Join(d, raws[p.Image])}})
	}
	// Through libvhdi straight from the VHDX too.
	vols = append(vols, vol{GPTVHDX, 2, []string{"-i", "vhd", "-o", "83968", filepath.Join(d, GPTVHDX)}})
	vols = append(vols, vol{MBRVHDX, 5, []string{"-i", "vhd", "-o", "167936", filepath.Join(d, MBRVHDX)}})

	for _, v := range vols {
		t.Run(fmt.Sprintf("%s-p%d-%s", v.image, v.part, v.args[0]), func(t *testing.T) {
			listed := fls(t, v.args...)
			want := map[string]bool{}
			nfiles := 0
			for _, e := range man {
				if e.Image != v.image || e.Part != v.part {
					continue
				}
				want[e.Path] = true
				got, ok := listed[e.Path]
				if !ok {
					t.Errorf("%s: not listed by fls", e.Path)
					continue
				}
				kind := map[byte]byte{'f': 'r', 'd': 'd', 'l': 'l'}[e.Kind]
				if got.kind != kind {
					t.Errorf("%s: fls kind %c, want %c", e.Path, got.kind, kind)
				}
				icatArgs := append(append([]string{}, v.args...), got.inode)
				switch e.Kind {
				case 'f':
					nfiles++
					b := run(t, "icat", icatArgs...)
					if int64(len(b)) != e.Size || sha(b) != e.SHA256 {
						t.Errorf("%s: icat gave %d bytes sha %s, want %d %s", e.Path, len(b), sha(b), e.Size, e.SHA256)
					}
				case 'l':
					// icat prints zeros for ext4 fast symlinks; istat shows the target.
					is := string(run(t, "istat", icatArgs...))
					if !strings.Contains(is, "symbolic link to: "+e.Target+"\n") {
						t.Errorf("%s: istat does not show target %q:\n%s", e.Path, e.Target, is)
					}
				}
			}
			if len(want) == 0 || nfiles == 0 {
				t.Fatal("no manifest entries for this volume")
			}
			for p := range listed {
				if !want[p] && !FSMetadata(p) && !strings.Contains(p, ":") {
					t.Errorf("%s: on the volume but not in the manifest", p)
				}
			}
			if v.image == GPTVHDX && v.part == 2 {
				ads, ok := listed[ADSFile+":"+ADSStream]
				if !ok {
					t.Fatalf("no ADS %s:%s", ADSFile, ADSStream)
				}
				icatArgs := append(append([]string{}, v.args...), ads.inode)
				if b := run(t, "icat", icatArgs...); string(b) != ADSContent {
					t.Errorf("ADS content %q", b)
				}
				if listed[ADSFile].inode != listed["hardlink-to-ads.txt"].inode {
					t.Error("hard link has a different MFT entry")
				}
			}
		})
	}
}
