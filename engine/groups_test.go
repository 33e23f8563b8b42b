package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/internal/testdisks"
)

// newCatalog makes a bare catalog (no chunkstore) for catalog-only tests.
func newCatalog(t *testing.T) (*Catalog, *catalog) {
	t.Helper()
	dir := t.TempDir()
	c := &catalog{dir: dir}
	for _, d := range []string{vmsDir, rpsDir, jobsDir, groupsDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "config"), []byte("{}"), 0o600)
	return &Catalog{cat: c}, c
}

func TestGroupCreateValidate(t *testing.T) {
	cat, c := newCatalog(t)
	for _, tc := range []struct {
		g    Group
		want string
	}{
		{Group{Name: "", RetentionDays: 5}, "group name"},
		{Group{Name: "../x", RetentionDays: 5}, "group name"},
		{Group{Name: ".hidden", RetentionDays: 5}, "group name"},
		{Group{Name: "p", RetentionDays: 0}, "retention range 0 days"},
		{Group{Name: "p", RetentionDays: -3}, "retention range -3 days"},
		{Group{Name: "p", RetentionDays: MaxRetentionDays + 1}, "retention range"},
		{Group{Name: "p", RetentionDays: 5, SyncFrequency: "5m"}, "sync frequency"},
		{Group{Name: "p", RetentionDays: 5, SyncFrequency: "25h"}, "sync frequency"},
		{Group{Name: "p", RetentionDays: 5, SyncFrequency: "fast"}, "sync frequency"},
		{Group{Name: "p", RetentionDays: 5, RPTimes: []string{"25:00"}}, "recovery point time"},
		{Group{Name: "p", RetentionDays: 5, ExpressFull: "Funday 02:00"}, "express full"},
		{Group{Name: "p", RetentionDays: 5, ExpressFull: "Sun"}, "express full"},
	} {
		if _, err := cat.CreateGroup(tc.g); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("create %+v: %v, want an error mentioning %q", tc.g, err, tc.want)
		}
	}
	if gs, _ := cat.ListGroups(); len(gs) != 0 {
		t.Fatalf("invalid groups were stored: %v", gs)
	}
	g, err := cat.CreateGroup(Group{Name: "prod", RetentionDays: 14, SyncFrequency: "15m", RPTimes: []string{"08:00", "20:00"}, ExpressFull: "Sun 02:00"})
	if err != nil {
		t.Fatal(err)
	}
	if g.Created.IsZero() {
		t.Error("no creation time")
	}
	if _, err := cat.CreateGroup(Group{Name: "prod", RetentionDays: 3}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second create: %v", err)
	}
	fi, err := os.Stat(c.groupPath("prod"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("group file: %v %v", fi, err)
	}
	got, err := cat.Group("prod")
	if err != nil || got.RetentionDays != 14 || got.SyncFrequency != "15m" || len(got.RPTimes) != 2 {
		t.Fatalf("read back %+v %v", got, err)
	}
	if _, err := cat.Group("nope"); !errors.Is(err, ErrUnknownGroup) || !strings.Contains(err.Error(), "vmvault group create nope") {
		t.Errorf("unknown group: %v", err)
	}
	ents, _ := os.ReadDir(c.path(groupsDir))
	if len(ents) != 1 {
		t.Errorf("files in groups dir: %v (temporaries left?)", ents)
	}
}

func TestGroupMembership(t *testing.T) {
	cat, c := newCatalog(t)
	for _, n := range []string{"a", "b", "c"} {
		c.putVM(VM{Name: n, GUID: newGUID()})
	}
	cat.CreateGroup(Group{Name: "g1", RetentionDays: 7})
	cat.CreateGroup(Group{Name: "g2", RetentionDays: 7})
	if _, err := cat.AddToGroup("nope", "a"); !errors.Is(err, ErrUnknownGroup) {
		t.Errorf("add to unknown group: %v", err)
	}
	if _, err := cat.AddToGroup("g1", "a", "ghost"); !errors.Is(err, ErrUnknownVM) || !strings.Contains(err.Error(), "backup --group g1") {
		t.Errorf("add unknown VM: %v", err)
	}
	if m, _ := cat.GroupMembers("g1"); len(m) != 0 {
		t.Fatalf("a failed add changed membership: %v", m)
	}
	if ch, err := cat.AddToGroup("g1", "a", "b"); err != nil || len(ch) != 2 {
		t.Fatalf("add: %v %v", ch, err)
	}
	if ch, err := cat.AddToGroup("g1", "a"); err != nil || len(ch) != 0 {
		t.Errorf("re-add: %v %v", ch, err)
	}
	if _, err := cat.AddToGroup("g2", "c", "a"); err == nil || !strings.Contains(err.Error(), "is in group g1") {
		t.Errorf("add a VM of another group: %v", err)
	}
	if m, _ := cat.GroupMembers("g2"); len(m) != 0 {
		t.Errorf("refused add changed g2: %v", m)
	}
	if _, err := cat.RemoveFromGroup("g1", "c"); err == nil || !strings.Contains(err.Error(), "not in group g1") {
		t.Errorf("remove a non-member: %v", err)
	}
	if _, err := cat.DeleteGroup("g1", false); err == nil || !strings.Contains(err.Error(), "2 member(s) (a, b)") {
		t.Errorf("delete with members: %v", err)
	}
	if ch, err := cat.RemoveFromGroup("g1", "b"); err != nil || len(ch) != 1 {
		t.Fatalf("remove: %v %v", ch, err)
	}
	if m, _ := cat.GroupMembers("g1"); len(m) != 1 || m[0].Name != "a" {
		t.Errorf("members after remove: %v", m)
	}
	if gone, err := cat.DeleteGroup("g1", true); err != nil || len(gone) != 1 {
		t.Fatalf("delete --force: %v %v", gone, err)
	}
	if vm, _ := cat.FindVM("a"); vm.Group != "" {
		t.Errorf("member of a deleted group still says %q", vm.Group)
	}
	if _, err := cat.Group("g1"); !errors.Is(err, ErrUnknownGroup) {
		t.Errorf("deleted group: %v", err)
	}
	if _, err := cat.DeleteGroup("g2", false); err != nil {
		t.Errorf("delete empty group: %v", err)
	}
}

// TestGroupShow: next planned times from the schedule, the space used
// (sum of bytes_stored and manifest sizes of the members' points) and the
// retention-range estimate from a synthetic history.
func TestGroupShow(t *testing.T) {
	cat, c := newCatalog(t)
	cat.CreateGroup(Group{Name: "g", RetentionDays: 30, SyncFrequency: "6h", RPTimes: []string{"20:00"}, ExpressFull: "Sun 02:00"})
	now := time.Date(2026, 11, 26, 10, 7, 0, 0, time.Local) // a Thursday

	v, err := cat.ShowGroup("g", now)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Members) != 0 || v.Space.Used != 0 || v.Space.Estimate != nil || !strings.Contains(v.Space.EstimateError, "not enough history") {
		t.Errorf("empty group: %+v", v)
	}
	want := []PlannedJob{
		{"sync", time.Date(2026, 11, 26, 12, 0, 0, 0, time.Local)},
		{"recovery point", time.Date(2026, 11, 26, 20, 0, 0, 0, time.Local)},
		{"express full", time.Date(2026, 11, 29, 2, 0, 0, 0, time.Local)},
	}
	if len(v.Next) != 3 {
		t.Fatalf("next %+v", v.Next)
	}
	if v.NextRun == nil || !v.NextRun.Time.Equal(want[0].Time) || strings.Join(v.NextRun.Kinds, ",") != "sync" {
		t.Errorf("next run %+v", v.NextRun)
	}
	// 12:00 is both a sync slot and a recovery point time: one run, both kinds.
	cat.CreateGroup(Group{Name: "both", RetentionDays: 1, SyncFrequency: "6h", RPTimes: []string{"12:00"}})
	if b, _ := cat.ShowGroup("both", now); b.NextRun == nil || strings.Join(b.NextRun.Kinds, ",") != "sync,recovery point" {
		t.Errorf("shared slot: %+v", b.NextRun)
	}
	for i := range want {
		if v.Next[i].Kind != want[i].Kind || !v.Next[i].Time.Equal(want[i].Time) {
			t.Errorf("next[%d] = %+v, want %+v", i, v.Next[i], want[i])
		}
	}

	// Two members: a with 1 GiB base and 10 MiB/day for 10 days, b with
	// 100 MiB base and 1 MiB/day; plus a non-member that must not count.
	const MiB = 1 << 20
	addVM := func(name, group string, base int64, daily int64, days int) {
		vm := VM{Name: name, GUID: newGUID(), Group: group}
		c.putVM(vm)
		t0 := time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC)
		for d := 0; d <= days; d++ {
			p := &Pointer{Version: 1, VM: name, VMGUID: vm.GUID, Time: t0.AddDate(0, 0, d), BytesStored: daily, ManifestSize: 1000}
			if d == 0 {
				p.BytesStored = base
			}
			if err := c.commitPointer(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	addVM("a", "g", 1024*MiB, 10*MiB, 10)
	v, _ = cat.ShowGroup("g", now)
	if e := v.Space.Estimate; e == nil || e.Base != 1024*MiB || e.DailyChange != 10*MiB || e.Total != 1024*MiB+300*MiB {
		t.Errorf("one member: estimate %+v (%s)", e, v.Space.EstimateError)
	}
	addVM("b", "g", 100*MiB, 1*MiB, 10)
	addVM("other", "", 5000*MiB, 500*MiB, 10)
	v, err = cat.ShowGroup("g", now)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Members) != 2 || v.Members[0].Name != "a" || v.Members[0].RecoveryPoints != 11 || v.Members[0].BytesStored != 1124*MiB {
		t.Errorf("members %+v", v.Members)
	}
	wantData := int64(1024*MiB + 100*MiB + 10*10*MiB + 10*1*MiB)
	if v.Space.DataStored != wantData || v.Space.Manifests != 22*1000 || v.Space.Used != wantData+22000 || v.Space.RecoveryPoints != 22 {
		t.Errorf("space %+v, want data %d", v.Space, wantData)
	}
	e := v.Space.Estimate
	if e == nil {
		t.Fatalf("no estimate: %s", v.Space.EstimateError)
	}
	if e.Base != 1124*MiB || e.DailyChange != 11*MiB || e.RetentionDays != 30 || e.Total != 1124*MiB+30*11*MiB {
		t.Errorf("estimate %+v, want base %d, daily %d", e, 1124*MiB, 11*MiB)
	}
	if !strings.Contains(v.Space.Counted, "bytes stored") {
		t.Errorf("counted: %q", v.Space.Counted)
	}
}

// TestBackupGroup: backup --group needs an existing group, joins it, and
// refuses a VM of another group.
func TestBackupGroup(t *testing.T) {
	td := testdisks.Dir(t)
	r, _ := newRepo(t)
	ctx := context.Background()
	src := []string{filepath.Join(td, testdisks.NoPartRaw)}
	if _, err := r.Backup(ctx, BackupOptions{VM: "v", Group: "prod", Sources: src}); !errors.Is(err, ErrUnknownGroup) ||
		!strings.Contains(err.Error(), "vmvault group create prod") {
		t.Fatalf("backup into an unknown group: %v", err)
	}
	if vms, _ := r.ListVMs(); len(vms) != 0 {
		t.Errorf("refused backup created VM records: %v", vms)
	}
	r.CreateGroup(Group{Name: "prod", RetentionDays: 7})
	r.CreateGroup(Group{Name: "test", RetentionDays: 7})
	res := backup(t, r, BackupOptions{VM: "v", Group: "prod", Sources: src})
	if res.Pointer.Group != "prod" {
		t.Errorf("recovery point group %q", res.Pointer.Group)
	}
	if m, _ := r.GroupMembers("prod"); len(m) != 1 || m[0].Name != "v" {
		t.Errorf("members %v", m)
	}
	if _, err := r.Backup(ctx, BackupOptions{VM: "v", Group: "test", Sources: src}); err == nil || !strings.Contains(err.Error(), "is in group prod") {
		t.Errorf("backup into another group: %v", err)
	}
	// Without --group the VM stays in its group.
	if res := backup(t, r, BackupOptions{VM: "v", Sources: src}); res.Pointer.Group != "prod" {
		t.Errorf("group of a later point: %q", res.Pointer.Group)
	}
}
