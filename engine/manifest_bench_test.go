package engine

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// bigManifest is the manifest of a fully allocated disk of size bytes
// backed up with 256 KiB chunks (the chunkstore default average), the worst
// case for loading a recovery point.
func bigManifest(size int64) *Manifest {
	r := rand.New(rand.NewPCG(1, 2))
	d := DiskManifest{Name: "big", Source: "/vms/big.vhdx", Identity: vdisk.Identity{VirtualSize: size}, SegmentSize: SegmentSize}
	for seg := int64(0); seg < size; seg += SegmentSize {
		s := Segment{Off: seg, Hash: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
		for off := seg; off < seg+SegmentSize; {
			n := min(int64(64<<10+r.IntN(384<<10)), seg+SegmentSize-off)
			var id ChunkID
			for i := range id {
				id[i] = byte(r.Uint32())
			}
			s.Extents = append(s.Extents, Extent{Off: off, Len: n, ID: id})
			off += n
		}
		d.Segments = append(d.Segments, s)
	}
	return &Manifest{Version: ManifestVersion, ID: "2026-11-26T000000Z", VM: "big", VMGUID: "g", Time: time.Now(), Disks: []DiskManifest{d}}
}

// BenchmarkLoadManifest100G: what entering a recovery point of a full
// 100 GiB disk costs before the first byte can be read (checksum, parse,
// checks, extent table), excluding the chunk reads of the manifest stream.
//
//	go test -run '^$' -bench LoadManifest100G -benchtime 3x ./engine/
func BenchmarkLoadManifest100G(b *testing.B) {
	m := bigManifest(100 << 30)
	raw, err := json.Marshal(m)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(raw))/(1<<20), "MiB-json")
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		_ = sha256Hex(raw)
		got, err := decodeManifest(raw)
		if err != nil {
			b.Fatal(err)
		}
		d := newDiskReader(nil, &got.Disks[0])
		if d.Size() != 100<<30 {
			b.Fatal("size")
		}
	}
}
