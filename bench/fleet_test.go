package bench

import (
	"context"
	"os/exec"
	"testing"

	"github.com/vmvault/vmvault/internal/testenv"
)

func needFleetTools(t *testing.T) {
	t.Helper()
	testenv.NeedTools(t, FleetTools...)
	testenv.NeedFUSE(t)
}

func TestBuildFleetTiny(t *testing.T) {
	needFleetTools(t)
	dir := t.TempDir()
	o := FleetOptions{Dir: dir, VMs: 1, Size: 256 << 20, Generations: 1, Logf: t.Logf}
	f, err := BuildFleet(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.VMs) != 1 || len(f.VMs[0].Gens) != 2 || f.Cached {
		t.Fatalf("fleet %+v", f)
	}
	for _, g := range f.VMs[0].Gens {
		if g.VirtualBytes != 256<<20 || g.AllocatedBytes <= 0 || g.AllocatedBytes > g.VirtualBytes {
			t.Errorf("gen %d: %+v", g.Gen, g)
		}
		// qemu-img is the independent oracle that the VHDX is valid.
		if out, err := exec.Command("qemu-img", "check", "-q", f.Image(0, g.Gen)).CombinedOutput(); err != nil {
			t.Errorf("qemu-img check gen %d: %v %s", g.Gen, err, out)
		}
	}
	c := f.VMs[0].Gens[1].Churn
	if c == nil || c.BytesEdited == 0 || c.BytesAdded == 0 || c.BytesPagefile == 0 {
		t.Errorf("churn %+v", c)
	}
	// Same options: the cache answers.
	f2, err := BuildFleet(context.Background(), o)
	if err != nil || !f2.Cached || f2.Dir != f.Dir {
		t.Fatalf("second build: cached=%v err=%v", f2 != nil && f2.Cached, err)
	}
}
