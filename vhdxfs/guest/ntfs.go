package guest

// NTFS through www.velocidex.com/golang/go-ntfs. We use its low-level pieces
// (boot sector + $MFT bootstrap, MFT records with attribute lists, $I30
// index records, data-run readers with sparse/compressed support) and do the
// naming ourselves, because its high-level ListDir/Stat helpers
//   - de-duplicate by MFT number, dropping the second name of a hard link
//     that lives in the same directory, and
//   - name every hard link after the record's last Win32 $FILE_NAME, so a
//     link in another directory shows the wrong name.
// Listing from the index entries keeps each directory's own name for the
// file; DOS 8.3 names (namespace 2) are skipped so a file is listed once.
//
// Visible vs hidden: in the root, "$" names of the reserved MFT records
// (0-23: $MFT, $MFTMirr, $LogFile, $Volume, $AttrDef, $Bitmap, $Boot,
// $BadClus, $Secure, $UpCase, $Extend, ...) are hidden. "System Volume
// Information" and "$RECYCLE.BIN" stay visible: they are ordinary directories
// with user-relevant content (shadow-copy config, deleted files), and
// sleuthkit lists them too.
//
// Alternate data streams are not listed; Open reads only the unnamed $DATA.
// Reparse points (symlinks, junctions) are shown as their underlying
// file/directory; Readlink is never offered on NTFS.

import (
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"sync"
	"unicode/utf16"

	"www.velocidex.com/golang/go-ntfs/parser"
)

const (
	ntfsPageSize  = 64 << 10
	ntfsCachePage = 256 // 16 MiB metadata page cache per volume
	ntfsFirstUser = 24  // MFT records below this are reserved for metafiles
)

type ntfsFS struct {
	// mu serialises go-ntfs metadata calls: its MFT LRU and profile
	// readers are shared, and it was written for single-threaded tools.
	mu  sync.Mutex
	ctx *parser.NTFSContext
	lbl string
}

func openNTFS(r io.ReaderAt, size int64) (backend, error) {
	pr, err := parser.NewPagedReader(io.NewSectionReader(r, 0, size), ntfsPageSize, ntfsCachePage)
	if err != nil {
		return nil, fmt.Errorf("guest: ntfs: %w", err)
	}
	ctx, err := parser.GetNTFSContext(pr, 0)
	if err != nil {
		return nil, fmt.Errorf("guest: ntfs: %v: %w", err, ErrCorrupt)
	}
	n := &ntfsFS{ctx: ctx}
	// The label is a nicety: a damaged $Volume must not fail the mount.
	_ = protect("ntfs", "$Volume", func() error {
		n.lbl = n.volumeLabel()
		return nil
	})
	return n, nil
}

func (n *ntfsFS) volumeLabel() string {
	v, err := n.ctx.GetMFT(3)
	if err != nil {
		return ""
	}
	for _, a := range v.EnumerateAttributes(n.ctx) {
		if a.Type().Value != 0x60 { // $VOLUME_NAME
			continue
		}
		sz := min(int64(a.DataSize()), 256)
		b := make([]byte, sz)
		m, _ := a.Data(n.ctx).ReadAt(b, 0)
		u := make([]uint16, m/2)
		for i := range u {
			u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
		}
		return string(utf16.Decode(u))
	}
	return ""
}

func (n *ntfsFS) kind() string  { return "ntfs" }
func (n *ntfsFS) label() string { return n.lbl }
func (n *ntfsFS) close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ctx.Close()
	return nil
}

func (n *ntfsFS) root() (node, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	nd, ok, err := n.stat(5, 0, ".")
	if err != nil {
		return node{}, err
	}
	if !ok || !nd.info.Mode.IsDir() {
		return node{}, fmt.Errorf("guest: ntfs: root record is not a directory: %w", ErrCorrupt)
	}
	return nd, nil
}

// stat reads one MFT record. ok is false for records that are not in use
// or whose sequence number does not match the index entry (a stale entry).
func (n *ntfsFS) stat(ref uint64, seq uint16, name string) (node, bool, error) {
	m, err := n.ctx.GetMFT(int64(ref))
	if err != nil {
		return node{}, false, fmt.Errorf("guest: ntfs: MFT record %d: %w", ref, err)
	}
	flags := m.Flags()
	if !flags.IsSet("ALLOCATED") {
		return node{}, false, nil
	}
	if seq != 0 && m.Sequence_value() != 0 && seq != m.Sequence_value() {
		return node{}, false, nil
	}
	nd := node{ref: ref, info: FileInfo{Name: name, Ino: ref, Mode: 0o644}}
	isDir := flags.IsSet("DIRECTORY")
	var links uint32
	for _, a := range m.EnumerateAttributes(n.ctx) {
		switch a.Type().Value {
		case parser.ATTR_TYPE_STANDARD_INFORMATION:
			si := n.ctx.Profile.STANDARD_INFORMATION(a.Data(n.ctx), 0)
			nd.info.ModTime = si.File_altered_time().Time.UTC()
			if si.Flags().Value&1 != 0 { // FILE_ATTRIBUTE_READONLY
				nd.info.Mode = 0o444
			}
		case parser.ATTR_TYPE_FILE_NAME:
			fn := n.ctx.Profile.FILE_NAME(a.Data(n.ctx), 0)
			if fn.NameType().Value != 2 { // not a DOS-only alias
				links++
			}
		case parser.ATTR_TYPE_DATA:
			if a.Name() == "" && (a.IsResident() || a.Runlist_vcn_start() == 0) {
				nd.info.Size = a.DataSize()
			}
		case parser.ATTR_TYPE_INDEX_ROOT:
			if a.Name() == "$I30" {
				isDir = true
			}
		}
	}
	if nd.info.Size < 0 {
		return node{}, false, fmt.Errorf("guest: ntfs: record %d has negative size: %w", ref, ErrCorrupt)
	}
	nd.info.Nlink = max(links, 1)
	if isDir {
		nd.info.Mode = fs.ModeDir | 0o755
		nd.info.Size = 0
	}
	return nd, true, nil
}

func (n *ntfsFS) list(dir node) ([]node, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	m, err := n.ctx.GetMFT(int64(dir.ref))
	if err != nil {
		return nil, fmt.Errorf("guest: ntfs: MFT record %d: %w", dir.ref, err)
	}
	seen := make(map[string]struct{})
	var out []node
	for _, rec := range m.Dir(n.ctx) {
		fn := rec.File()
		if fn.NameType().Value == 2 {
			continue // DOS 8.3 alias of a name listed in the Win32 namespace
		}
		ref := rec.MftReference()
		name := fn.Name()
		if dir.ref == 5 && ref < ntfsFirstUser && len(name) > 0 && name[0] == '$' {
			continue // metafile
		}
		if ref == dir.ref {
			continue // the root's "." entry
		}
		key := name + "\x00" + strconv.FormatUint(ref, 10)
		if _, dup := seen[key]; dup {
			continue
		}
		seen[key] = struct{}{}
		if len(out) >= MaxDirEntries {
			break
		}
		var nd node
		var ok bool
		err := protect("ntfs", name, func() error {
			var err error
			nd, ok, err = n.stat(ref, rec.Seq_num(), name)
			return err
		})
		if err != nil || !ok {
			continue // one damaged record must not hide its siblings
		}
		out = append(out, nd)
	}
	return out, nil
}

func (n *ntfsFS) open(nd node) (File, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	m, err := n.ctx.GetMFT(int64(nd.ref))
	if err != nil {
		return nil, fmt.Errorf("guest: ntfs: MFT record %d: %w", nd.ref, err)
	}
	if nd.info.Size == 0 {
		return &memFile{}, nil
	}
	rng, err := parser.OpenStream(n.ctx, m, parser.ATTR_TYPE_DATA, parser.WILDCARD_STREAM_ID, "")
	if err != nil {
		return nil, fmt.Errorf("guest: ntfs: open data of record %d: %w", nd.ref, err)
	}
	return &ntfsFile{r: rng, size: nd.info.Size}, nil
}

// ntfsFile reads through go-ntfs's run reader. Data beyond the runs (or in
// sparse runs) reads as zeros, which is what NTFS itself returns there.
type ntfsFile struct {
	r    io.ReaderAt
	size int64
}

func (f *ntfsFile) Size() int64  { return f.size }
func (f *ntfsFile) Close() error { return nil }
func (f *ntfsFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.r.ReadAt(p, off)
	if err == io.EOF && off+int64(n) < f.size && n < len(p) {
		// go-ntfs stops at the last allocated run; the rest of the
		// file up to its size is unallocated, i.e. zeros.
		end := min(int64(len(p)), f.size-off)
		clear(p[n:end])
		n = int(end)
		err = nil
	}
	return n, err
}
