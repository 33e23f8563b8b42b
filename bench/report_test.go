package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestParseSweep(t *testing.T) {
	sw, err := ParseSweep("chunk-avg=256K, 1M,4M")
	if err != nil || sw.Key != "chunk-avg" || len(sw.Values) != 3 || sw.Values[1] != "1M" {
		t.Fatalf("%+v %v", sw, err)
	}
	for _, bad := range []string{"chunk-avg", "nope=1", "rs=8", "rs=0+2", "compression=lz4", "compression=zstd:0", "compression=s2:3",
		"encryption=maybe", "cache-size=1M", "concurrency=0", "pack-size=x"} {
		if _, err := ParseSweep(bad); err == nil {
			t.Errorf("ParseSweep(%q) accepted", bad)
		}
	}
}

func TestKnobsInitOptions(t *testing.T) {
	k, err := Knobs{}.With("chunk-avg", "1M")
	if err != nil {
		t.Fatal(err)
	}
	o := k.initOptions(nil)
	if o.ChunkAvg != 1<<20 || o.ChunkMin != 256<<10 || o.ChunkMax != 8<<20 {
		t.Errorf("chunk-avg=1M gives %d/%d/%d", o.ChunkMin, o.ChunkAvg, o.ChunkMax)
	}
	k, _ = Knobs{}.With("rs", "4+0")
	if o := k.initOptions(nil); !o.NoParity || o.DataShards != 4 {
		t.Errorf("rs=4+0: %+v", o)
	}
	k, _ = Knobs{}.With("rs", "10+4")
	if o := k.initOptions(nil); o.NoParity || o.DataShards != 10 || o.ParityShards != 4 {
		t.Errorf("rs=10+4: %+v", o)
	}
	for _, c := range []struct {
		knob, method string
		level        int
	}{{"zstd:3", "zstd", 3}, {"zstd:-3", "zstd", -3}, {"s2", "s2", 0}, {"none", "none", 0}} {
		k, err := Knobs{}.With("compression", c.knob)
		if err != nil {
			t.Fatal(err)
		}
		if o := k.initOptions(nil); o.Compression != c.method || o.ZstdLevel != c.level {
			t.Errorf("compression=%s: method %q level %d", c.knob, o.Compression, o.ZstdLevel)
		}
	}
	k, _ = Knobs{}.With("encryption", "on")
	if o := k.initOptions([]byte("pw")); !k.Encrypt || string(o.Password) != "pw" {
		t.Errorf("encryption: %+v", o)
	}
}

// fakeReport is a report as Run would make it, without running anything.
func fakeReport() *Report {
	r := &Report{Machine: Machine{CPUModel: "Test CPU <&>", Cores: 2},
		Fleet:  &Fleet{Options: FleetOptions{VMs: 1, Size: 1 << 30, Generations: 1, Churn: 0.04}, VMs: []FleetVM{{Name: "vm0", Gens: []FleetImage{{VirtualBytes: 1 << 30, AllocatedBytes: 1e8}}}}},
		Sweeps: []Sweep{{Key: "chunk-avg", Values: []string{"1M"}}}}
	add := func(tool, cfg, stage string, gen int, wall float64, stored int64) {
		s := StageResult{Tool: tool, Config: cfg, Stage: stage, Gen: gen, WallSeconds: wall, CPUSeconds: wall,
			VirtualBytes: 1 << 30, AllocatedBytes: 1e8, Bytes: 1e8, StoredBytes: stored, StoredParityBytes: stored * 5 / 4, DedupRatio: 2}
		if stage == StageMountRand {
			s.IOPS = 1000 / wall
		}
		s.rates()
		r.Stages = append(r.Stages, s)
	}
	for _, tool := range []string{ToolVMVault, ToolRestic} {
		k := 1.0
		if tool == ToolRestic {
			k = 4
		}
		add(tool, "default", StageFull, 0, 1*k, 5e7)
		add(tool, "default", StageIncr, 1, 0.5*k, 6e7)
		add(tool, "default", StageRestoreVHDX, 1, 0.7*k, 0)
		add(tool, "default", StageMountRand, 1, 10, 0)
	}
	add(ToolVMVault, "default", StageRestoreRaw, 1, 0.6, 0)
	add(ToolVMVault, "chunk-avg=1M", StageFull, 0, 0.9, 4e7)
	return r
}

func TestChartIsValidXML(t *testing.T) {
	var b bytes.Buffer
	if err := fakeReport().WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&b)
	rects, texts := 0, 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("chart is not valid XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			switch se.Name.Local {
			case "rect":
				rects++
			case "text":
				texts++
			}
		}
	}
	// background + legend + bars of both panels
	if rects < 10 || texts < 10 {
		t.Errorf("chart has %d rects, %d texts", rects, texts)
	}
	var empty bytes.Buffer
	if err := (&Report{}).WriteSVG(&empty); err != nil || xml.Unmarshal(empty.Bytes(), new(struct{})) != nil {
		t.Errorf("empty report chart: %v", err)
	}
}

func TestTable(t *testing.T) {
	var b bytes.Buffer
	if err := fakeReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"incr g1", "x vs restic", "4.00x", "stored bytes per generation", "chunk-avg=1M", "restore-raw"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
