package vhdx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// rdtLogEntries lists the loge entries qemu left in a file's log: offset
// and sequence number, in log order.
type rdtLoge struct {
	off     int
	seq     uint64
	guid    [16]byte
	flushed uint64
}

func rdtScanLog(b []byte) []rdtLoge {
	var out []rdtLoge
	for o := MiB; o < 2*MiB; o += 4096 {
		if string(b[o:o+4]) == SigLogEntry {
			var e rdtLoge
			e.off, e.seq, e.flushed = o, binary.LittleEndian.Uint64(b[o+16:]), binary.LittleEndian.Uint64(b[o+48:])
			copy(e.guid[:], b[o+32:o+48])
			out = append(out, e)
		}
	}
	return out
}

// rdtSetLogGUID stores guid into both headers and fixes their checksums.
func rdtSetLogGUID(b []byte, guid [16]byte) {
	for _, h := range []int{Header1Offset, Header2Offset} {
		copy(b[h+48:h+64], guid[:])
		rdtFixCRC(b, h, HeaderSize)
	}
}

// rdtBATOffset returns the BAT region offset from region table 1.
func rdtBATOffset(t testing.TB, b []byte) int {
	t.Helper()
	info, err := Inspect(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.BATRegion.FileOffset)
}

// rdtMakeDirty turns a clean qemu file into the VHDX-NOTES 1.4 fixture:
// the LogGuid of entry e goes into both headers and the on-disk BAT is
// overwritten with ZERO entries, so only a replay recovers the data.
func rdtMakeDirty(t testing.TB, clean []byte, e rdtLoge, batEntries int) []byte {
	b := bytes.Clone(clean)
	rdtSetLogGUID(b, e.guid)
	bat := rdtBATOffset(t, clean)
	for i := range batEntries {
		binary.LittleEndian.PutUint64(b[bat+8*i:], PayloadZero)
	}
	return b
}

// TestReaderLogReplayQemu builds dirty-log fixtures from files qemu wrote
// (convert, and qemu-io writes into a fresh file) and checks the in-memory
// replay gives the bytes qemu gives after `qemu-img check -r all` on a copy.
func TestReaderLogReplayQemu(t *testing.T) {
	rdtNeedQemu(t)
	dir := t.TempDir()
	src := rdtMakeRaw(t, dir, 24*MiB, 5)
	conv := filepath.Join(dir, "conv.vhdx")
	rdtRun(t, "qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "block_size=1M", src, conv)
	iow := filepath.Join(dir, "io.vhdx")
	rdtRun(t, "qemu-img", "create", "-q", "-f", "vhdx", "-o", "block_size=1M", iow, "8M")
	rdtRun(t, "qemu-io", "-f", "vhdx", "-c", "write -P 0x5a 0 3M", "-c", "write -P 0xa5 5M 1M", iow)

	for _, name := range []string{conv, iow} {
		t.Run(filepath.Base(name), func(t *testing.T) {
			clean, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			cleanInfo, err := Inspect(bytes.NewReader(clean), int64(len(clean)))
			if err != nil || cleanInfo.Log.Replayed {
				t.Fatalf("clean file: %v, replayed=%v (stale loge entries must be ignored while LogGuid is 0)", err, cleanInfo.Log.Replayed)
			}
			entries := rdtScanLog(clean)
			if len(entries) < 2 {
				t.Fatalf("qemu left %d log entries, want ≥ 2", len(entries))
			}
			last := entries[len(entries)-1]
			dirty := rdtMakeDirty(t, clean, last, int(cleanInfo.BAT.Entries))
			dirtyPath := filepath.Join(dir, "dirty-"+filepath.Base(name))
			if err := os.WriteFile(dirtyPath, dirty, 0o644); err != nil {
				t.Fatal(err)
			}
			// The oracle: qemu replays the log in a read-write open of a copy.
			cp := dirtyPath + ".copy"
			if err := os.WriteFile(cp, dirty, 0o644); err != nil {
				t.Fatal(err)
			}
			rdtRun(t, "qemu-img", "check", "-q", "-r", "all", cp)
			expected := cp + ".raw"
			rdtRun(t, "qemu-img", "convert", "-f", "vhdx", "-O", "raw", cp, expected)
			want := rdtFileSHA(t, expected)

			d := rdtOpen(t, dirtyPath)
			if got := rdtSHA(t, d, d.Size()); got != want {
				t.Fatalf("replayed content %s, qemu %s", got, want)
			}
			if li := d.Info().Log; !li.Replayed || li.Entries != 1 || li.HeadSequence != last.seq {
				t.Errorf("log info %+v", li)
			}
			if a := d.Allocated(); len(a) == 0 {
				t.Errorf("Allocated empty after replay")
			}
			if cur, _ := os.ReadFile(dirtyPath); !bytes.Equal(cur, dirty) {
				t.Fatal("the reader modified the source file")
			}
			// Without replay (LogGuid 0) the wiped BAT reads as zeros: the
			// fixture really depends on the log.
			noLog := bytes.Clone(dirty)
			rdtSetLogGUID(noLog, [16]byte{})
			d2, err := rdtOpenBytes(noLog)
			if err != nil {
				t.Fatal(err)
			}
			if rdtSHA(t, d2, d2.Size()) == want || len(d2.Allocated()) != 0 {
				t.Error("fixture does not depend on the log")
			}
			// A stale entry's LogGuid replays an older BAT sector: content differs.
			stale := rdtMakeDirty(t, clean, entries[0], int(cleanInfo.BAT.Entries))
			if d3, err := rdtOpenBytes(stale); err != nil || rdtSHA(t, d3, d3.Size()) == want {
				t.Errorf("stale entry replay: err=%v, content unexpectedly equal", err)
			}
			// Truncated below FlushedFileOffset: refuse.
			_, err = rdtOpenBytes(dirty[:last.flushed-MiB])
			if err == nil || !strings.HasPrefix(err.Error(), "vhdx: log: file is truncated") || !errors.Is(err, vdisk.ErrCorrupt) {
				t.Errorf("truncated: %v", err)
			}
			// A LogGuid no entry carries: no active sequence.
			bad := bytes.Clone(dirty)
			rdtSetLogGUID(bad, [16]byte{1, 2, 3})
			if _, err := rdtOpenBytes(bad); err == nil || !strings.HasPrefix(err.Error(), "vhdx: log: LogGuid is set but no valid active sequence") {
				t.Errorf("unknown LogGuid: %v", err)
			}
		})
	}
}

// rdtOp is one descriptor of a hand-built log entry.
type rdtOp struct {
	zero bool
	off  int64
	n    int64  // zero length
	data []byte // 4096 bytes for a data descriptor
}

// rdtLogEntry encodes a log entry (MS-VHDX 2.3.1) the way a writer would.
func rdtLogEntry(guid [16]byte, seq uint64, tail uint32, flushed, last uint64, ops []rdtOp) []byte {
	le := binary.LittleEndian
	descSectors := (len(ops) + 2 + 127) / 128
	nData := 0
	for _, o := range ops {
		if !o.zero {
			nData++
		}
	}
	b := make([]byte, (descSectors+nData)*4096)
	copy(b, SigLogEntry)
	le.PutUint32(b[8:], uint32(len(b)))
	le.PutUint32(b[12:], tail)
	le.PutUint64(b[16:], seq)
	le.PutUint32(b[24:], uint32(len(ops)))
	copy(b[32:48], guid[:])
	le.PutUint64(b[48:], flushed)
	le.PutUint64(b[56:], last)
	data := descSectors * 4096
	for i, o := range ops {
		slot := i + 2
		d := b[slot/128*4096+slot%128*32:]
		le.PutUint64(d[16:], uint64(o.off))
		le.PutUint64(d[24:], seq)
		if o.zero {
			copy(d, SigLogZero)
			le.PutUint64(d[8:], uint64(o.n))
			continue
		}
		copy(d, SigLogDesc)
		copy(d[4:8], o.data[4092:])
		copy(d[8:16], o.data[:8])
		s := b[data : data+4096]
		copy(s, SigLogData)
		le.PutUint32(s[4:], uint32(seq>>32))
		copy(s[8:4092], o.data[8:4092])
		le.PutUint32(s[4092:], uint32(seq))
		data += 4096
	}
	rdtFixCRC(b, 0, len(b))
	return b
}

// rdtPutLog writes entry at ring offset off of the log (wrapping).
func rdtPutLog(file []byte, logOff, logLen, off int, entry []byte) {
	for i := 0; i < len(entry); i += 4096 {
		o := logOff + (off+i)%logLen
		copy(file[o:o+4096], entry[i:i+4096])
	}
}

// TestReaderLogReplayCrafted replays hand-built sequences qemu never
// writes: several entries, zero descriptors, descriptor order, an active
// sequence that wraps around the end of the ring, and a newer run whose
// tail lies outside it.
func TestReaderLogReplayCrafted(t *testing.T) {
	p, raw := rdtQemuImage(t, t.TempDir())
	clean, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := rdtSHA(t, bytes.NewReader(raw), int64(len(raw)))
	zeroSHA := rdtSHA(t, bytes.NewReader(make([]byte, len(raw))), int64(len(raw)))
	bat := rdtBATOffset(t, clean)
	batSector := bytes.Clone(clean[bat : bat+4096])
	guid := [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	const logOff, logLen = MiB, MiB
	fs := uint64(len(clean))
	zeroBAT := rdtOp{zero: true, off: int64(bat), n: 4096}
	restore := rdtOp{off: int64(bat), data: batSector}

	build := func(place func(f []byte)) []byte {
		f := bytes.Clone(clean)
		clear(f[logOff : logOff+logLen]) // drop qemu's leftovers
		rdtSetLogGUID(f, guid)
		for i := range 24 { // wipe the on-disk BAT: only the log can restore it
			binary.LittleEndian.PutUint64(f[bat+8*i:], PayloadZero)
		}
		place(f)
		return f
	}
	cases := []struct {
		name    string
		place   func(f []byte)
		wantSHA string
		wantErr string
	}{
		{"wrapping zero-then-desc", func(f []byte) {
			// seq 7 in the last sector, seq 8 at the ring start; tail = 7's offset.
			rdtPutLog(f, logOff, logLen, logLen-4096, rdtLogEntry(guid, 7, logLen-4096, fs, fs, []rdtOp{zeroBAT}))
			rdtPutLog(f, logOff, logLen, 0, rdtLogEntry(guid, 8, logLen-4096, fs, fs, []rdtOp{restore}))
		}, want, ""},
		{"desc-then-zero", func(f []byte) {
			rdtPutLog(f, logOff, logLen, 0, rdtLogEntry(guid, 3, 0, fs, fs, []rdtOp{restore}))
			rdtPutLog(f, logOff, logLen, 8192, rdtLogEntry(guid, 4, 0, fs, fs, []rdtOp{zeroBAT}))
		}, zeroSHA, ""},
		{"entry wrapping the ring end", func(f []byte) {
			rdtPutLog(f, logOff, logLen, logLen-4096, rdtLogEntry(guid, 9, logLen-4096, fs, fs, []rdtOp{restore}))
		}, want, ""},
		{"higher run without its tail is ignored", func(f []byte) {
			rdtPutLog(f, logOff, logLen, 0, rdtLogEntry(guid, 3, 0, fs, fs, []rdtOp{restore}))
			rdtPutLog(f, logOff, logLen, 64*1024, rdtLogEntry(guid, 50, 32*1024, fs, fs, []rdtOp{zeroBAT}))
		}, want, ""},
		{"bad checksum", func(f []byte) {
			e := rdtLogEntry(guid, 3, 0, fs, fs, []rdtOp{restore})
			e[5000] ^= 1
			rdtPutLog(f, logOff, logLen, 0, e)
		}, "", "vhdx: log: LogGuid is set but no valid active sequence"},
		{"last file offset extends the file", func(f []byte) {
			rdtPutLog(f, logOff, logLen, 0, rdtLogEntry(guid, 3, 0, fs, fs+4*MiB, []rdtOp{restore}))
		}, want, ""},
		{"log version", func(f []byte) {
			for _, h := range []int{Header1Offset, Header2Offset} {
				f[h+64] = 1
				rdtFixCRC(f, h, HeaderSize)
			}
		}, "", "vhdx: log: unsupported log version 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := rdtOpenBytes(build(c.place))
			if c.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := rdtSHA(t, d, d.Size()); got != c.wantSHA {
				t.Errorf("content differs from expectation")
			}
		})
	}
}

// TestReaderOverlayTable checks the overlay's ordering rules directly.
func TestReaderOverlayTable(t *testing.T) {
	sec := func(v byte) *[4096]byte { var s [4096]byte; s[0], s[4095] = v, v; return &s }
	ov := &rdOverlay{sectors: map[int64]*[4096]byte{}}
	ov.putData(0, sec(1))
	ov.putData(8192, sec(2))
	if err := ov.putZero(4096, 8192); err != nil { // deletes sector 8192
		t.Fatal(err)
	}
	ov.putData(12288, sec(3)) // after the zero: wins
	if err := ov.putZero(4096, 4096); err != nil {
		t.Fatal(err)
	}
	ov.zeros = rdMergeSpans(ov.zeros)
	p := bytes.Repeat([]byte{0xee}, 5*4096)
	ov.apply(p, 0)
	for _, c := range []struct {
		at   int
		want byte
	}{{0, 1}, {4095, 1}, {4096, 0}, {8192, 0}, {12287, 0}, {12288, 3}, {16383, 3}, {16384, 0xee}} {
		if p[c.at] != c.want {
			t.Errorf("byte %d = %#x, want %#x", c.at, p[c.at], c.want)
		}
	}
	// An unaligned window.
	q := make([]byte, 10)
	ov.apply(q, 12283)
	if !bytes.Equal(q, []byte{0, 0, 0, 0, 0, 3, 0, 0, 0, 0}) {
		t.Errorf("window %v", q)
	}
}
