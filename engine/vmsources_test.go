package engine

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testdisks"
)

// TestVMSourcesSetClear: the source override is validated (absolute,
// not empty, known VM) before anything is written, cleaned and
// de-duplicated, survives a reopen of the catalog and a group edit, and
// a clear removes it from the record; a record written before the field
// existed reads as "no override".
func TestVMSourcesSetClear(t *testing.T) {
	cat, c := newCatalog(t)
	web := VM{Name: "web", GUID: newGUID(), Group: "g", GUIDSource: "generated"}
	if err := c.putVM(web); err != nil {
		t.Fatal(err)
	}
	cat.CreateGroup(Group{Name: "g", RetentionDays: 7})
	record := func() string {
		t.Helper()
		b, err := os.ReadFile(c.path(vmsDir, web.GUID+".json"))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	before := record()

	for _, tc := range []struct {
		vm      string
		sources []string
		want    string
	}{
		{"web", nil, "no path given"},
		{"web", []string{}, "no path given"},
		{"web", []string{"vms/web"}, `"vms/web" is not an absolute path`},
		{"web", []string{"/vms/web", "./disk.vhdx"}, `"./disk.vhdx" is not an absolute path`},
		{"web", []string{""}, `"" is not an absolute path`},
	} {
		if _, err := cat.SetVMSources(tc.vm, tc.sources); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "engine: ") {
			t.Errorf("set %q: %v, want an error mentioning %q", tc.sources, err, tc.want)
		}
	}
	if _, err := cat.SetVMSources("ghost", []string{"/vms/ghost"}); !errors.Is(err, ErrUnknownVM) || !strings.Contains(err.Error(), "first backup") {
		t.Errorf("set on an unknown VM: %v", err)
	}
	if _, err := cat.ClearVMSources("ghost"); !errors.Is(err, ErrUnknownVM) {
		t.Errorf("clear on an unknown VM: %v", err)
	}
	if got := record(); got != before {
		t.Fatalf("refused sets changed the record:\n%s\n->\n%s", before, got)
	}
	if sv, err := cat.VMSourceOverride("web"); err != nil || sv != nil {
		t.Errorf("override before any set: %+v %v", sv, err)
	}

	v, err := cat.SetVMSources(web.GUID, []string{"/vms/web/", "/vms/web", "/vms//data/../disk.vhdx"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/vms/web", "/vms/disk.vhdx"}
	if !slices.Equal(v.Sources, want) || v.Group != "g" || v.Name != "web" {
		t.Errorf("set returned %+v, want sources %q in group g", v, want)
	}
	// Reopened from disk, by name; a group edit keeps the override.
	cat2, err := OpenCatalog(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat2.RemoveFromGroup("g", "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := cat2.AddToGroup("g", "web"); err != nil {
		t.Fatal(err)
	}
	got, err := cat2.FindVM("web")
	if err != nil || !slices.Equal(got.Sources, want) || got.Group != "g" {
		t.Errorf("after reopen and a group edit: %+v %v", got, err)
	}
	sv, err := cat2.VMSourceOverride("web")
	if err != nil || sv == nil || sv.SourcesFrom != SourcesFromVM || !slices.Equal(sv.Sources, want) || sv.VMGUID != web.GUID {
		t.Errorf("override view: %+v %v", sv, err)
	}
	if fi, err := os.Stat(c.path(vmsDir, web.GUID+".json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("record file: %v %v", fi, err)
	}
	if ents, _ := os.ReadDir(c.path(vmsDir)); len(ents) != 1 {
		t.Errorf("files in the VM directory: %v (temporaries left?)", ents)
	}

	if v, err := cat2.ClearVMSources("web"); err != nil || v.Sources != nil {
		t.Fatalf("clear: %+v %v", v, err)
	}
	if r := record(); strings.Contains(r, "sources") {
		t.Errorf("cleared record still has sources:\n%s", r)
	}
	if _, err := cat2.ClearVMSources("web"); err != nil {
		t.Errorf("second clear: %v", err)
	}
	if sv, err := cat2.VMSourceOverride("web"); err != nil || sv != nil {
		t.Errorf("override after clear: %+v %v", sv, err)
	}

	// A record of an older vmvault (no sources field) reads and takes one.
	old := newGUID()
	os.WriteFile(c.path(vmsDir, old+".json"), []byte(`{"name":"old","guid":"`+old+`","created":"2025-01-01T00:00:00Z","guid_source":"vmcx"}`), 0o600)
	if sv, err := cat.VMSourceOverride("old"); err != nil || sv != nil {
		t.Errorf("old record: %+v %v", sv, err)
	}
	if v, err := cat.SetVMSources("old", []string{"/vms/old"}); err != nil || v.GUIDSource != "vmcx" || !v.Created.Equal(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("set on an old record lost fields: %+v %v", v, err)
	}
}

// TestScheduleSourcesOverride: the scheduler takes a member's sources
// from its override when set (dry run and run, SourcesFrom "vm"), from
// its latest recovery point again after a clear ("latest-rp"); a backup
// made from the override keeps it; a member with a record but no
// recovery point is scheduled from its override, and without one it
// says how to give it sources.
func TestScheduleSourcesOverride(t *testing.T) {
	td := testdisks.Dir(t)
	r, _ := newRepo(t)
	ctx := context.Background()
	if _, err := r.CreateGroup(Group{Name: "g", RetentionDays: 30, SyncFrequency: "24h"}); err != nil {
		t.Fatal(err)
	}
	disk1 := filepath.Join(td, testdisks.NoPartRaw)
	disk2 := filepath.Join(td, testdisks.MBRRaw)
	a := backup(t, r, BackupOptions{VM: "a", Group: "g", Sources: []string{disk1}})

	s := &Scheduler{}
	dry := func() map[string]ScheduledMember {
		t.Helper()
		p, err := s.Plan(r.Catalog, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		s.Sources(ctx, r, p)
		out := map[string]ScheduledMember{}
		for _, m := range p.Members {
			out[m.VM] = m
		}
		return out
	}
	check := func(when string, m ScheduledMember, from string, src ...string) {
		t.Helper()
		if m.SourcesFrom != from || !slices.Equal(m.Sources, src) || m.SourcesError != "" {
			t.Errorf("%s: %s: sources %q from %q (error %q), want %q from %q", when, m.VM, m.Sources, m.SourcesFrom, m.SourcesError, src, from)
		}
	}
	check("no override", dry()["a"], SourcesFromLatestRP, disk1)
	if sv, err := r.VMSources(ctx, "a"); err != nil || sv.SourcesFrom != SourcesFromLatestRP || sv.RP != a.Pointer.ID || !slices.Equal(sv.Sources, []string{disk1}) {
		t.Errorf("VMSources without override: %+v %v", sv, err)
	}

	if _, err := r.SetVMSources("a", []string{disk2}); err != nil {
		t.Fatal(err)
	}
	check("override", dry()["a"], SourcesFromVM, disk2)
	if sv, err := r.VMSources(ctx, a.Pointer.VMGUID); err != nil || sv.SourcesFrom != SourcesFromVM || sv.RP != "" || !slices.Equal(sv.Sources, []string{disk2}) {
		t.Errorf("VMSources with override: %+v %v", sv, err)
	}
	// The JSON a dry run prints names the origin.
	if b, _ := json.Marshal(dry()["a"]); !strings.Contains(string(b), `"sources_from":"vm"`) {
		t.Errorf("member JSON: %s", b)
	}
	if _, err := r.ClearVMSources("a"); err != nil {
		t.Fatal(err)
	}
	check("after clear", dry()["a"], SourcesFromLatestRP, disk1)

	// A real run from the override: the new point is made from it and
	// the backup's VM record update keeps it.
	r.SetVMSources("a", []string{disk2})
	movePointer(t, r, a.Pointer.VMGUID, a.Pointer.ID, 72*time.Hour)
	p, err := s.Plan(r.Catalog, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := s.Run(ctx, r, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 || rep.Runs[0].Result != RunOK || rep.Runs[0].SourcesFrom != SourcesFromVM || !slices.Equal(rep.Runs[0].Sources, []string{disk2}) {
		t.Fatalf("run: %+v", rep.Runs)
	}
	man, err := r.LoadManifest(ctx, "a", rep.Runs[0].RP)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(man.Sources, []string{disk2}) || len(man.Disks) != 1 || man.Disks[0].Source != disk2 {
		t.Fatalf("scheduled point made from %q (%d disks), want %s", man.Sources, len(man.Disks), disk2)
	}
	if vm, _ := r.FindVM("a"); !slices.Equal(vm.Sources, []string{disk2}) {
		t.Errorf("override after a backup: %q", vm.Sources)
	}

	// A member known to the catalog but never backed up.
	fresh := VM{Name: "fresh", GUID: newGUID(), Group: "g", Created: time.Now().UTC(), GUIDSource: "generated"}
	if err := r.cat.putVM(fresh); err != nil {
		t.Fatal(err)
	}
	if m := dry()["fresh"]; !strings.Contains(m.SourcesError, "no recovery point") || !strings.Contains(m.SourcesError, "vmvault group sources") {
		t.Errorf("fresh without override: %+v", m)
	}
	if _, err := r.VMSources(ctx, "fresh"); err == nil || !strings.Contains(err.Error(), "vmvault backup --repo") {
		t.Errorf("VMSources of fresh: %v", err)
	}
	r.SetVMSources("fresh", []string{disk1})
	p, err = s.Plan(r.Catalog, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rep, err = s.Run(ctx, r, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 || rep.Runs[0].VM != "fresh" || rep.Runs[0].Result != RunOK || !slices.Equal(rep.Runs[0].Sources, []string{disk1}) {
		t.Fatalf("first scheduled backup of fresh: %+v", rep.Runs)
	}
	if ps, _ := r.ListRecoveryPoints("fresh"); len(ps) != 1 || ps[0].VMGUID != fresh.GUID {
		t.Errorf("fresh's points: %+v", ps)
	}
}
