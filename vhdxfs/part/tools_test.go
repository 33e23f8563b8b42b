package part

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

const mib = 1 << 20

// makeSgdiskGPT builds a 64 MiB GPT with sgdisk: entries 1, 2, 3 and 5 used
// (4 left empty to check that numbers follow the entry index), non-ASCII
// names, a fixed disk GUID and the legacy-BIOS-bootable attribute on 5.
func makeSgdiskGPT(t *testing.T) string {
	t.Helper()
	testenv.NeedTools(t, "sgdisk")
	p := newImage(t, "gpt.raw", 64*mib)
	run(t, "", "sgdisk", "-o", "-U", "11111111-2222-3333-4444-555555555555",
		"-n1:2048:+8M", "-t1:ef00", "-c1:EFI system partition",
		"-n2:0:+4M", "-t2:0c01", "-c2:Microsoft reserved partition",
		"-n3:0:+16M", "-t3:0700", "-c3:Données ✓ 日本語",
		"-n5:0:0", "-t5:8300", "-c5:linux", "-A5:set:2", p)
	return p
}

// TestGPTAgainstTools compares a sgdisk-made GPT with `sfdisk --json`
// (Linux numbering, type, unique GUID, name, attributes), `mmls` (start,
// length, entry slot, name) and `sgdisk -i` (the non-ASCII name).
func TestGPTAgainstTools(t *testing.T) {
	testenv.NeedTools(t, "sgdisk", "sfdisk", "mmls")
	p := makeSgdiskGPT(t)
	// Marker in p3 to check Section.
	patch(t, p, (2048+8*2048+4*2048)*512, []byte("MARK-P3"))

	tb := mustRead(t, p, 512)
	if tb.Scheme != "gpt" || tb.SectorSize != 512 || len(tb.Warnings) != 0 {
		t.Fatalf("table: %+v", tb)
	}
	if got := tb.DiskGUID.String(); got != "11111111-2222-3333-4444-555555555555" {
		t.Errorf("DiskGUID %s", got)
	}

	sf := sfdiskJSON(t, p)
	if sf.Label != "gpt" || !strings.EqualFold(sf.ID, tb.DiskGUID.String()) {
		t.Errorf("sfdisk label %q id %q", sf.Label, sf.ID)
	}
	if len(sf.Partitions) != len(tb.Partitions) {
		t.Fatalf("sfdisk has %d partitions, we have %d", len(sf.Partitions), len(tb.Partitions))
	}
	for _, sp := range sf.Partitions {
		idx := nodeIndex(t, sp.Node)
		q, ok := byIndex(tb, idx)
		if !ok {
			t.Errorf("p%d missing", idx)
			continue
		}
		if q.Start != sp.Start*512 || q.Size != sp.Size*512 ||
			!strings.EqualFold(q.Type, sp.Type) || !strings.EqualFold(q.GUID.String(), sp.UUID) ||
			q.Name != sp.Name || q.Bootable != strings.Contains(sp.Attrs, "LegacyBIOSBootable") {
			t.Errorf("p%d: ours %+v, sfdisk %+v", idx, q, sp)
		}
	}
	wantNames := map[int]string{1: "EFI System", 2: "Microsoft reserved", 3: "Microsoft basic data", 5: "Linux filesystem"}
	for idx, n := range wantNames {
		if q, _ := byIndex(tb, idx); q.TypeName != n {
			t.Errorf("p%d TypeName %q, want %q", idx, q.TypeName, n)
		}
	}

	mm := mmls(t, p, 512)
	if len(mm) != len(tb.Partitions) {
		t.Fatalf("mmls: %d partitions %+v", len(mm), mm)
	}
	for _, m := range mm {
		q, ok := byIndex(tb, m.Slot+1)
		if !ok || q.Start != m.Start*512 || q.Size != m.Len*512 || q.Name != m.Desc {
			t.Errorf("mmls slot %d %+v; ours %+v", m.Slot, m, q)
		}
	}

	info := run(t, "", "sgdisk", "-i", "3", p)
	if !strings.Contains(info, "Partition name: 'Données ✓ 日本語'") {
		t.Errorf("sgdisk -i 3:\n%s", info)
	}

	f, _ := os.Open(p)
	defer f.Close()
	q, _ := byIndex(tb, 3)
	buf := make([]byte, 7)
	if _, err := q.Section(f).ReadAt(buf, 0); err != nil || string(buf) != "MARK-P3" {
		t.Errorf("Section(p3) read %q, %v", buf, err)
	}
	if q.Section(f).Size() != 16*mib {
		t.Errorf("Section size %d", q.Section(f).Size())
	}
}

// TestGPTBackupFallback damages the primary or backup GPT of a sgdisk disk
// with single bit flips and checks which copy is used, the warning, and the
// named error when both are gone.
func TestGPTBackupFallback(t *testing.T) {
	clean := makeSgdiskGPT(t)
	want := mustRead(t, clean, 512).Partitions
	size := int64(64 * mib)
	last := size - 512             // backup header
	backupEntries := last - 32*512 // backup entry array
	cases := []struct {
		name     string
		flips    []int64
		wantErr  error  // nil: must parse
		wantWarn string // substring of a warning
	}{
		{"primary header", []int64{512 + 40}, nil, "primary GPT unusable (part: gpt: header checksum mismatch at LBA 1"},
		{"primary signature", []int64{512}, nil, "part: gpt: no header signature at LBA 1"},
		{"primary entries", []int64{1024 + 2*128 + 33}, nil, "primary GPT unusable (part: gpt: entries checksum mismatch at LBA 1"},
		{"primary entry name", []int64{1024 + 127}, nil, "using the backup at LBA 131071"},
		{"backup header", []int64{last + 40}, nil, "backup GPT unusable: part: gpt: header checksum mismatch at LBA 131071"},
		{"backup entries", []int64{backupEntries + 5}, nil, "backup GPT unusable: part: gpt: entries checksum mismatch"},
		{"both headers", []int64{512 + 40, last + 40}, ErrGPTHeaderChecksum, ""},
		{"both entry arrays", []int64{1024 + 5, backupEntries + 5}, ErrGPTEntriesChecksum, ""},
		{"primary header, backup entries", []int64{512 + 88, backupEntries + 200}, ErrGPTEntriesChecksum, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := copyFile(t, clean)
			for _, off := range c.flips {
				flip(t, p, off)
			}
			tb, err := readImage(t, p, 512)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) || !errors.Is(err, vdisk.ErrCorrupt) {
					t.Fatalf("err = %v, want %v", err, c.wantErr)
				}
				if !strings.HasPrefix(err.Error(), "part: gpt: ") {
					t.Errorf("error text %q", err)
				}
				t.Logf("error: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalParts(tb.Partitions, want) {
				t.Errorf("partitions differ:\n%+v\n%+v", tb.Partitions, want)
			}
			if !hasWarning(tb, c.wantWarn) {
				t.Errorf("warnings %q lack %q", tb.Warnings, c.wantWarn)
			}
		})
	}
	// A zeroed primary (LBA 1..33) is what a careless `dd` leaves.
	t.Run("zeroed primary", func(t *testing.T) {
		p := copyFile(t, clean)
		patch(t, p, 512, make([]byte, 33*512))
		tb, err := readImage(t, p, 512)
		if err != nil || !equalParts(tb.Partitions, want) || !hasWarning(tb, "using the backup") {
			t.Fatalf("tb %+v err %v", tb, err)
		}
	})
}

// TestGPT4Kn reads a GPT made by `fdisk -b 4096` (sgdisk 1.0.9 cannot
// write 4 KiB-sector tables to a file) and checks it against `mmls -b 4096`,
// with the right and the wrong sector-size hint, and with its primary
// header damaged.
func TestGPT4Kn(t *testing.T) {
	testenv.NeedTools(t, "fdisk", "mmls")
	p := newImage(t, "gpt4k.raw", 16*mib)
	// g: new GPT; n: two partitions; t: type EFI for p1; x/n: name p2; w.
	run(t, "g\nn\n1\n256\n+2M\nt\n1\nn\n2\n\n+4M\nx\nn\n2\nDaten ä\nr\nw\n", "fdisk", "-b", "4096", p)

	tb := mustRead(t, p, 4096)
	if tb.Scheme != "gpt" || tb.SectorSize != 4096 || len(tb.Warnings) != 0 {
		t.Fatalf("table %+v", tb)
	}
	mm := mmls(t, p, 4096)
	if len(mm) != 2 || len(tb.Partitions) != 2 {
		t.Fatalf("mmls %+v, ours %+v", mm, tb.Partitions)
	}
	for _, m := range mm {
		q, ok := byIndex(tb, m.Slot+1)
		if !ok || q.Start != m.Start*4096 || q.Size != m.Len*4096 || q.Name != m.Desc {
			t.Errorf("mmls %+v; ours %+v", m, q)
		}
	}
	if q, _ := byIndex(tb, 1); q.Start != 256*4096 || q.TypeName != "EFI System" {
		t.Errorf("p1 %+v", q)
	}
	if q, _ := byIndex(tb, 2); q.Name != "Daten ä" || q.TypeName != "Linux filesystem" {
		t.Errorf("p2 %+v", q)
	}

	// Hint 512 (or unknown): found anyway; a wrong hint is reported.
	tb512 := mustRead(t, p, 512)
	if tb512.SectorSize != 4096 || !equalParts(tb512.Partitions, tb.Partitions) || !hasWarning(tb512, "GPT found with 4096-byte sectors") {
		t.Errorf("hint 512: %+v", tb512)
	}
	if tb0 := mustRead(t, p, 0); tb0.SectorSize != 4096 || len(tb0.Warnings) != 0 {
		t.Errorf("hint 0: %+v", tb0)
	}

	q := copyFile(t, p)
	flip(t, q, 4096+40)
	tbb := mustRead(t, q, 4096)
	if !equalParts(tbb.Partitions, tb.Partitions) || !hasWarning(tbb, "using the backup at LBA 4095") {
		t.Errorf("4Kn backup: %+v", tbb)
	}
}

// makeSfdiskMBR: p1 NTFS (bootable), p2 FAT32 LBA, p3 extended holding
// logicals p5 (Linux) and p6 (NTFS), slot 4 empty.
func makeSfdiskMBR(t *testing.T) string {
	t.Helper()
	testenv.NeedTools(t, "sfdisk")
	p := newImage(t, "mbr.raw", 64*mib)
	run(t, "label: dos\nlabel-id: 0x12345678\n"+
		"start=2048, size=8192, type=7, bootable\n"+
		"start=10240, size=8192, type=c\n"+
		"start=20480, type=5\n"+
		"start=22528, size=4096, type=83\n"+
		"start=28672, size=8192, type=7\n", "sfdisk", "-q", p)
	return p
}

// TestMBRAgainstTools compares an sfdisk MBR with an extended partition and
// two logicals against `sfdisk --json` (numbers, starts, sizes, types,
// bootable) and `mmls` (the logicals found by walking the EBR chain).
func TestMBRAgainstTools(t *testing.T) {
	testenv.NeedTools(t, "sfdisk", "mmls")
	p := makeSfdiskMBR(t)
	patch(t, p, 28672*512, []byte("MARK-P6"))
	tb := mustRead(t, p, 512)
	if tb.Scheme != "mbr" || len(tb.Warnings) != 0 {
		t.Fatalf("table %+v", tb)
	}
	sf := sfdiskJSON(t, p)
	if len(sf.Partitions) != len(tb.Partitions) {
		t.Fatalf("sfdisk %+v\nours %+v", sf.Partitions, tb.Partitions)
	}
	for i, sp := range sf.Partitions {
		q := tb.Partitions[i] // same order: primaries, then logicals in chain order
		if q.Index != nodeIndex(t, sp.Node) || q.Start != sp.Start*512 || q.Size != sp.Size*512 ||
			q.Type != "0x"+leftPad(sp.Type) || q.Bootable != sp.Bootable {
			t.Errorf("ours %+v, sfdisk %+v", q, sp)
		}
	}
	want := []struct {
		idx       int
		typ, name string
		container bool
	}{{1, "0x07", "NTFS/exFAT", false}, {2, "0x0c", "FAT32 LBA", false}, {3, "0x05", "Extended", true}, {5, "0x83", "Linux", false}, {6, "0x07", "NTFS/exFAT", false}}
	for i, w := range want {
		q := tb.Partitions[i]
		if q.Index != w.idx || q.Type != w.typ || q.TypeName != w.name || q.IsContainer() != w.container {
			t.Errorf("p%d: %+v", w.idx, q)
		}
	}

	// mmls: data partitions only (its extended entries are Meta lines).
	var data []Partition
	for _, q := range tb.Partitions {
		if !q.IsContainer() {
			data = append(data, q)
		}
	}
	mm := mmls(t, p, 512)
	if len(mm) != len(data) {
		t.Fatalf("mmls %+v\nours %+v", mm, data)
	}
	for i, m := range mm {
		if data[i].Start != m.Start*512 || data[i].Size != m.Len*512 ||
			!strings.Contains(m.Desc, "("+data[i].Type+")") {
			t.Errorf("mmls %+v; ours %+v", m, data[i])
		}
	}

	f, _ := os.Open(p)
	defer f.Close()
	p6, _ := byIndex(tb, 6)
	b, _ := io.ReadAll(io.LimitReader(p6.Section(f), 7))
	if string(b) != "MARK-P6" {
		t.Errorf("Section(p6) = %q", b)
	}
}

// TestMBRExtendedLBA: type 0x0f extended in slot 2 with three logicals and
// empty slots 1, 3, 4, compared with sfdisk --json.
func TestMBRExtendedLBA(t *testing.T) {
	testenv.NeedTools(t, "sfdisk")
	p := newImage(t, "mbr2.raw", 32*mib)
	run(t, "label: dos\n"+
		"start=2048, size=4096, type=83\n"+
		"start=8192, size=40000, type=f\n"+
		"start=10240, size=2048, type=82\n"+
		"start=14336, size=2048, type=83\n"+
		"start=18432, size=2048, type=b\n", "sfdisk", "-q", p)
	// Clear slot 1 so the extended sits in slot 2 after an empty slot.
	patch(t, p, 0x1BE, make([]byte, 16))
	tb := mustRead(t, p, 512)
	sf := sfdiskJSON(t, p)
	var got []string
	for _, q := range tb.Partitions {
		got = append(got, strings.Join([]string{itoa(q.Index), itoa64(q.Start / 512), itoa64(q.Size / 512), q.Type}, "/"))
	}
	var exp []string
	for _, sp := range sf.Partitions {
		exp = append(exp, strings.Join([]string{itoa(nodeIndex(t, sp.Node)), itoa64(sp.Start), itoa64(sp.Size), "0x" + leftPad(sp.Type)}, "/"))
	}
	if strings.Join(got, " ") != strings.Join(exp, " ") {
		t.Fatalf("ours   %v\nsfdisk %v", got, exp)
	}
	if q, _ := byIndex(tb, 2); !q.IsContainer() || q.TypeName != "Extended LBA" {
		t.Errorf("p2 %+v", q)
	}
}

// TestWholeDiskFilesystems: file systems made directly on a plain file
// (no table; mmls finds none) are one Index-0 partition covering the disk.
// FAT and NTFS boot sectors end in 55 AA like an MBR: they must not be
// mistaken for one.
func TestWholeDiskFilesystems(t *testing.T) {
	cases := []struct {
		name, tool string
		args       []string
		fs         string
	}{
		{"ext4", "mkfs.ext4", []string{"-F", "-q"}, "ext2/3/4"},
		{"fat32", "mkfs.vfat", []string{"-F", "32", "-s", "1"}, "FAT32"},
		{"fat16", "mkfs.vfat", []string{"-F", "16"}, "FAT12/16"},
		{"ntfs", "mkntfs", []string{"-F", "-Q", "-q"}, "NTFS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			testenv.NeedTools(t, c.tool)
			p := newImage(t, c.name+".raw", 40*mib)
			run(t, "", c.tool, append(c.args, p)...)
			tb := mustRead(t, p, 512)
			if tb.Scheme != "none" || len(tb.Partitions) != 1 || len(tb.Warnings) != 0 {
				t.Fatalf("%+v", tb)
			}
			q := tb.Partitions[0]
			if q.Index != 0 || q.Start != 0 || q.Size != 40*mib || q.TypeName != c.fs {
				t.Errorf("p0 %+v, want fs %q", q, c.fs)
			}
			if b, _ := os.ReadFile(p); c.name != "ext4" && !bytes.Equal(b[510:512], []byte{0x55, 0xAA}) {
				t.Errorf("expected a 55 AA boot sector for %s", c.name)
			}
		})
	}
}

func equalParts(a, b []Partition) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func hasWarning(tb *Table, sub string) bool {
	for _, w := range tb.Warnings {
		if strings.Contains(w, sub) {
			return true
		}
	}
	return false
}

func leftPad(hex string) string {
	if len(hex) == 1 {
		return "0" + hex
	}
	return strings.ToLower(hex)
}

func itoa(n int) string     { return strconv.Itoa(n) }
func itoa64(n int64) string { return strconv.FormatInt(n, 10) }
