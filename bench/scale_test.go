package bench

import (
	"context"
	"testing"
)

func TestRunScaleSmoke(t *testing.T) {
	o := ScaleOptions{Dir: t.TempDir(), Fraction: 0.0000625, Seed: 1} // ~20k entries at the defaults
	n := ScaleEntries(o)
	if n < 15000 || n > 25000 {
		t.Fatalf("ScaleEntries = %d, want ~20k", n)
	}
	r, err := RunScale(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	x := r.Index
	if x.Entries != n || x.LookedUpPresent != x.Entries || x.FoundPresent != x.Entries {
		t.Errorf("entries %d, present looked up %d found %d", x.Entries, x.LookedUpPresent, x.FoundPresent)
	}
	if x.LookedUpAbsent != x.Entries || x.FoundAbsent != 0 {
		t.Errorf("absent looked up %d found %d", x.LookedUpAbsent, x.FoundAbsent)
	}
	if x.Packs != (x.Entries+x.ChunksPerPack-1)/x.ChunksPerPack {
		t.Errorf("%d packs for %d entries of %d per pack", x.Packs, x.Entries, x.ChunksPerPack)
	}
	for name, v := range map[string]float64{
		"insert/s": x.InsertPerSec, "present/s": x.PresentPerSec, "absent/s": x.AbsentPerSec,
		"disk bytes": float64(x.DiskBytes), "bytes/entry": x.BytesPerEntry, "reopen s": x.ReopenSeconds,
	} {
		if v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	if x.BytesPerEntry < 33+scaleLocLen/2 { // keys + values can't shrink below this uncompressed
		t.Errorf("bytes/entry %.1f implausibly small", x.BytesPerEntry)
	}
	if len(r.Projections) != 2 || r.Projections[0].ChunkAvg != DefaultScaleChunkAvg || r.Projections[1].ChunkAvg != 1<<20 {
		t.Fatalf("projections %+v", r.Projections)
	}
	p := r.Projections[0]
	if p.Entries != r.ServerBytes/p.ChunkAvg || p.Entries <= x.Entries || p.IndexBytes <= x.DiskBytes ||
		r.Projections[1].Entries*4 != p.Entries {
		t.Errorf("projection %+v inconsistent with %+v", p, x)
	}
	c := r.Catalog
	if c.PointerBytes <= 0 || c.ManifestBytes <= c.PointerBytes || c.PointerFiles != int64(r.VMs*r.RPs) ||
		c.ManifestTotalBytes != c.PointerFiles*c.ManifestBytes || c.SegmentsPerDisk != r.DiskSize/(16<<20) {
		t.Errorf("catalog %+v", c)
	}
}
