package engine

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/engine/retention"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

func TestSplitSegments(t *testing.T) {
	const S = 16
	offs, pieces := splitSegments([]vdisk.Extent{{Off: 2, Len: 3}, {Off: 10, Len: 30}, {Off: 64, Len: 16}}, S)
	wantOffs := []int64{0, 16, 32, 64}
	wantPieces := [][]vdisk.Extent{
		{{Off: 2, Len: 3}, {Off: 10, Len: 6}},
		{{Off: 16, Len: 16}},
		{{Off: 32, Len: 8}},
		{{Off: 64, Len: 16}},
	}
	if !reflect.DeepEqual(offs, wantOffs) || !reflect.DeepEqual(pieces, wantPieces) {
		t.Fatalf("got %v %v", offs, pieces)
	}
}

func TestMapRefs(t *testing.T) {
	id := func(b byte) chunkstore.ID { return chunkstore.ID{b} }
	runs := []run{{100, 10}, {200, 5}, {300, 20}}
	refs := []chunkstore.Ref{{ID: id(1), Offset: 0, Length: 12}, {ID: id(2), Offset: 12, Length: 23}}
	got := mapRefs(runs, refs)
	want := []Extent{
		{Off: 100, Len: 10, ID: ChunkID(id(1))},
		{Off: 200, Len: 2, ID: ChunkID(id(1)), ChunkOff: 10},
		{Off: 202, Len: 3, ID: ChunkID(id(2))},
		{Off: 300, Len: 20, ID: ChunkID(id(2)), ChunkOff: 3},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

func TestRPIDOrder(t *testing.T) {
	ids := []string{"2026-01-01T000000Z", "2026-01-01T000000Z.2", "2026-01-01T000000Z.10", "2026-01-01T000001Z"}
	for i := 1; i < len(ids); i++ {
		if compareRPID(ids[i-1], ids[i]) >= 0 {
			t.Errorf("%s !< %s", ids[i-1], ids[i])
		}
	}
	for _, bad := range []string{"", "2026-01-01T000000Z.1", "2026-01-01T000000Z.x", "latest", "2026-01-01"} {
		if _, _, ok := parseRPID(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

// memChunks is an in-memory chunkGetter.
type memChunks map[chunkstore.ID][]byte

func (m memChunks) Get(_ context.Context, id chunkstore.ID) ([]byte, error) {
	b, ok := m[id]
	if !ok {
		return nil, chunkstore.ErrNotFound
	}
	return b, nil
}

func (m memChunks) GetRange(_ context.Context, id chunkstore.ID, off int64, p []byte) (int, error) {
	b, ok := m[id]
	if !ok {
		return 0, chunkstore.ErrNotFound
	}
	if off >= int64(len(b)) {
		return 0, nil
	}
	return copy(p, b[off:]), nil
}

// TestDiskReader compares random reads of a DiskReader with the flat image
// the extents describe (zeros between extents, EOF at the size).
func TestDiskReader(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const size = 1 << 20
	flat := make([]byte, size)
	mc := memChunks{}
	dm := &DiskManifest{Name: "d", Identity: vdisk.Identity{VirtualSize: size}}
	var off int64 = 1000
	for n := 0; off < size-5000; n++ {
		l := int64(rng.IntN(20000) + 1)
		l = min(l, size-off)
		chunk := make([]byte, l+int64(rng.IntN(100)))
		for i := range chunk {
			chunk[i] = byte(rng.Uint32()) | 1
		}
		id := chunkstore.ID{byte(n), byte(n >> 8), 7}
		mc[id] = chunk
		coff := int64(rng.IntN(len(chunk) - int(l) + 1))
		copy(flat[off:off+l], chunk[coff:coff+l])
		dm.Segments = append(dm.Segments, Segment{Off: off / SegmentSize * SegmentSize,
			Extents: []Extent{{Off: off, Len: l, ID: ChunkID(id), ChunkOff: coff}}})
		off += l + int64(rng.IntN(30000))
	}
	d := newDiskReader(mc, dm)
	for i := 0; i < 2000; i++ {
		o := rng.Int64N(size + 100)
		p := make([]byte, rng.IntN(70000))
		n, err := d.ReadAt(p, o)
		wantN := int(max(0, min(int64(len(p)), size-o)))
		if n != wantN {
			t.Fatalf("ReadAt(%d, %d) = %d, want %d (%v)", len(p), o, n, wantN, err)
		}
		if (o+int64(len(p)) > size) != (err == io.EOF) {
			t.Fatalf("ReadAt(%d, %d): err %v", len(p), o, err)
		}
		if n > 0 && !bytes.Equal(p[:n], flat[o:o+int64(n)]) {
			t.Fatalf("ReadAt(%d, %d): wrong bytes", len(p), o)
		}
	}
	got := vdisk.AllocatedBytes(d.Allocated())
	var want int64
	for _, e := range flatExtents(dm) {
		want += e.Len
	}
	if got != want {
		t.Errorf("allocated %d, want %d", got, want)
	}
}

func TestDecodeManifestRejectsOverlap(t *testing.T) {
	bad := []byte(`{"version":1,"disks":[{"name":"d","identity":{"virtual_size":100},"segments":[{"off":0,"extents":[
		{"off":0,"len":50,"id":"` + string(bytes.Repeat([]byte("a"), 64)) + `"},
		{"off":40,"len":10,"id":"` + string(bytes.Repeat([]byte("b"), 64)) + `"}]}]}]}`)
	if _, err := decodeManifest(bad); err == nil {
		t.Fatal("overlapping extents accepted")
	}
}

func TestDecodeManifestRejectsEscapes(t *testing.T) {
	for _, b := range []string{
		`{"version":1,"disks":[{"name":"../x","identity":{"virtual_size":1}}]}`,
		`{"version":1,"disks":[{"name":"a/b","identity":{"virtual_size":1}}]}`,
		`{"version":1,"disks":[{"name":"d","rel_dir":"../../etc","identity":{"virtual_size":1}}]}`,
		`{"version":1,"config":[{"name":"/etc/passwd"}]}`,
		`{"version":1,"config":[{"name":"../a.vmcx"}]}`,
		`{"version":2}`,
	} {
		if _, err := decodeManifest([]byte(b)); err == nil {
			t.Errorf("accepted %s", b)
		}
	}
}

// FuzzDecodeManifest: any bytes give a manifest or an error, never a
// panic; an accepted manifest's extents are sorted and inside the disk.
func FuzzDecodeManifest(f *testing.F) {
	f.Add([]byte(`{"version":1,"vm":"a","disks":[{"name":"d","identity":{"virtual_size":100},"segments":[{"off":0,"extents":[{"off":0,"len":50,"id":"` + string(bytes.Repeat([]byte("a"), 64)) + `"}]}]}]}`))
	f.Add([]byte(`{"version":1,"config":[{"name":"Virtual Machines/x.vmcx","chunks":[]}]}`))
	f.Add([]byte(`{}`))
	packed, err := json.Marshal(Manifest{Version: ManifestVersion, Disks: []DiskManifest{{Name: "d",
		Identity: vdisk.Identity{VirtualSize: 1 << 20}, Segments: []Segment{{Off: 4096, Extents: []Extent{
			{Off: 4096, Len: 512, ID: ChunkID{1}}, {Off: 8192, Len: 100, ChunkOff: 7, ID: ChunkID{2}}}}}}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(packed)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeManifest(b)
		if err != nil {
			return
		}
		for _, d := range m.Disks {
			ext := flatExtents(&d)
			for i, e := range ext {
				if e.Len <= 0 || e.End() > d.Identity.VirtualSize || (i > 0 && e.Off < ext[i-1].End()) {
					t.Fatalf("accepted bad extent %+v", e)
				}
			}
		}
	})
}

func TestForget(t *testing.T) {
	dir := t.TempDir()
	c := &catalog{dir: dir}
	for _, d := range []string{vmsDir, rpsDir, groupsDir} {
		os.MkdirAll(filepath.Join(dir, d), 0o700)
	}
	os.WriteFile(filepath.Join(dir, "config"), []byte("{}"), 0o600)
	cat := &Catalog{cat: c}
	if _, err := cat.CreateGroup(Group{Name: "g", RetentionDays: 30}); err != nil {
		t.Fatal(err)
	}
	vm := VM{Name: "a", GUID: newGUID(), Group: "g"}
	c.putVM(vm)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 6; i++ {
		p := &Pointer{Version: 1, VM: "a", VMGUID: vm.GUID, Time: base.Add(time.Duration(i) * 24 * time.Hour)}
		if err := c.commitPointer(p); err != nil {
			t.Fatal(err)
		}
	}
	// keep-within counts back from the newest point (day 5): 56h keeps
	// days 3, 4 and 5.
	pol := retention.Policy{KeepLast: 2, KeepWithin: 56 * time.Hour}
	rep, err := cat.Forget(ForgetOptions{Group: "g", Policy: pol, DryRun: true})
	if err != nil || rep.Forgotten != 3 || rep.Kept != 3 || len(rep.VMs) != 1 || rep.VMs[0].PolicyFrom != "flags" {
		t.Fatalf("dry run: %+v %v, want the 3 oldest", rep, err)
	}
	if k := rep.VMs[0].Keep; k[0].ID != "2026-01-06T000000Z" || strings.Join(k[0].Reasons, ",") != "last,within 2d8h" ||
		k[2].ID != "2026-01-04T000000Z" || strings.Join(k[2].Reasons, ",") != "within 2d8h" {
		t.Errorf("kept %+v", k)
	}
	if f := rep.VMs[0].Forget; f[0].ID != "2026-01-03T000000Z" || f[0].Reasons[0] != "no rule keeps it" {
		t.Errorf("forgotten %+v", f)
	}
	if ps, _ := cat.ListRecoveryPoints("a"); len(ps) != 6 {
		t.Fatal("dry run removed points")
	}
	if _, err := cat.Forget(ForgetOptions{VM: "a", Policy: pol}); err != nil {
		t.Fatal(err)
	}
	ps, _ := cat.ListRecoveryPoints("a")
	if len(ps) != 3 || ps[0].ID != "2026-01-04T000000Z" {
		t.Fatalf("kept %d, first %s", len(ps), ps[0].ID)
	}
	if _, err := cat.Forget(ForgetOptions{VM: "a", IDs: []string{"2026-01-01T000000Z"}}); !errors.Is(err, ErrUnknownRP) {
		t.Errorf("forget of a missing point: %v", err)
	}
	if _, err := cat.Forget(ForgetOptions{VM: "a", Policy: retention.Policy{KeepLast: -2}}); !errors.Is(err, retention.ErrInvalid) {
		t.Errorf("keep-last -2: %v", err)
	}
	// Explicit IDs forget exactly those, even the newest, with no implicit
	// group policy.
	rep, err = cat.Forget(ForgetOptions{VM: "a", IDs: []string{"2026-01-06T000000Z"}})
	if err != nil || rep.Forgotten != 1 || rep.VMs[0].PolicyFrom != "none" {
		t.Fatalf("explicit: %+v %v", rep, err)
	}
	if _, err := cat.Forget(ForgetOptions{VM: "a", Policy: retention.Policy{KeepLast: 1}}); err != nil {
		t.Fatal(err)
	}
	if ps, _ := cat.ListRecoveryPoints("a"); len(ps) != 1 || ps[0].ID != "2026-01-05T000000Z" {
		t.Fatalf("keep-last 1 left %v", ps)
	}
}

// TestRPIDSuffix: two recovery points in the same second get ".2", ".3".
func TestRPIDSuffix(t *testing.T) {
	dir := t.TempDir()
	c := &catalog{dir: dir}
	os.MkdirAll(filepath.Join(dir, rpsDir), 0o700)
	at := time.Date(2026, 11, 26, 10, 42, 33, 500, time.UTC)
	var ids []string
	for i := 0; i < 3; i++ {
		p := &Pointer{VMGUID: "g", Time: at}
		if err := c.commitPointer(p); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, p.ID)
	}
	want := []string{"2026-11-26T104233Z", "2026-11-26T104233Z.2", "2026-11-26T104233Z.3"}
	if !reflect.DeepEqual(ids, want) {
		t.Fatalf("ids %v, want %v", ids, want)
	}
	got, _ := c.rpIDs("g")
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("listed %v", got)
	}
	fi, _ := os.Stat(filepath.Join(dir, rpsDir, "g", want[0]+".json"))
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pointer mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestSegmentPacked: the packed form round-trips, the legacy form still
// reads, and damaged packed data is refused.
func TestSegmentPacked(t *testing.T) {
	s := Segment{Off: 64 << 20, Hash: "h", Extents: []Extent{
		{Off: 64 << 20, Len: 300 << 10, ChunkOff: 5, ID: ChunkID{1, 2}},
		{Off: 64<<20 + 400<<10, Len: 1, ID: ChunkID{3}},
		{Off: 128<<20 - 10, Len: 10, ChunkOff: 1 << 40, ID: ChunkID{31: 9}},
	}}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("extents")) {
		t.Fatalf("not packed: %s", b)
	}
	var got Segment
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Off != s.Off || got.Hash != s.Hash || len(got.Extents) != len(s.Extents) {
		t.Fatalf("got %+v", got)
	}
	for i := range s.Extents {
		if got.Extents[i] != s.Extents[i] {
			t.Fatalf("extent %d: %+v, want %+v", i, got.Extents[i], s.Extents[i])
		}
	}
	legacy := `{"off":0,"hash":"h","extents":[{"off":0,"len":5,"id":"` + strings.Repeat("0a", 32) + `"}]}`
	if err := json.Unmarshal([]byte(legacy), &got); err != nil || len(got.Extents) != 1 || got.Extents[0].Len != 5 {
		t.Fatalf("legacy: %v %+v", err, got)
	}
	for _, bad := range []string{
		`{"off":0,"x":"!!"}`,
		`{"off":0,"x":"AAAA"}`, // extent without its ID
		`{"off":0,"x":"` + base64.RawStdEncoding.EncodeToString(append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 0}, make([]byte, 32)...)) + `"}`,
		`{"off":0,"x":"AQEA` + strings.Repeat("A", 43) + `","extents":[{"off":0,"len":1}]}`,
	} {
		var g Segment
		if err := json.Unmarshal([]byte(bad), &g); err == nil {
			t.Errorf("accepted %s: %+v", bad, g)
		}
	}
	if _, err := json.Marshal(Segment{Off: 10, Extents: []Extent{{Off: 5, Len: 1}}}); err == nil {
		t.Fatal("extent before its segment marshalled")
	}
}
