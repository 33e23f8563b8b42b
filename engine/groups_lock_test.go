package engine

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCatalogLockAddVersusRename: `group add` and a backup that renames
// the same VM (both rewrite its record) run at once, many times: with the
// catalog write lock, neither update is lost: every VM ends up both in
// the group and renamed.
func TestCatalogLockAddVersusRename(t *testing.T) {
	cat, c := newCatalog(t)
	if _, err := cat.CreateGroup(Group{Name: "g", RetentionDays: 7}); err != nil {
		t.Fatal(err)
	}
	repo := &Repo{Catalog: cat}
	const n = 40
	guids := make([]string, n)
	for i := range guids {
		guids[i] = newGUID()
		if err := c.putVM(VM{Name: fmt.Sprintf("vm%d", i), GUID: guids[i]}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 2*n)
	for i, g := range guids {
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			if _, err := cat.AddToGroup("g", g); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			<-start
			if _, err := repo.resolveVM(fmt.Sprintf("renamed%d", i), g, "", time.Now()); err != nil {
				errs <- err
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	lost := 0
	for i, g := range guids {
		vm, err := cat.FindVM(g)
		if err != nil {
			t.Fatal(err)
		}
		if vm.Group != "g" || vm.Name != fmt.Sprintf("renamed%d", i) {
			lost++
			t.Errorf("VM %d: %+v: an update was lost", i, vm)
		}
	}
	if ms, _ := cat.GroupMembers("g"); len(ms) != n {
		t.Errorf("group has %d members, want %d (%d lost)", len(ms), n, lost)
	}
}

// TestCatalogLockTwoProcesses: two processes add the same VMs, one after
// another, each to its own group, starting at the same moment. A VM is in
// at most one group, so for every VM exactly one process may succeed (the
// other is refused), and the VM must be in the group of the one that
// did: no process may report a membership that the other overwrote.
func TestCatalogLockTwoProcesses(t *testing.T) {
	if dir := os.Getenv("VMVAULT_TEST_LOCK_HELPER"); dir != "" {
		lockHelper(dir, os.Getenv("VMVAULT_TEST_LOCK_GROUP"), os.Getenv("VMVAULT_TEST_LOCK_START"))
		return
	}
	cat, c := newCatalog(t)
	for _, g := range []string{"a", "b"} {
		if _, err := cat.CreateGroup(Group{Name: g, RetentionDays: 7}); err != nil {
			t.Fatal(err)
		}
	}
	const n = 60
	for i := range n {
		if err := c.putVM(VM{Name: fmt.Sprintf("vm%02d", i), GUID: newGUID()}); err != nil {
			t.Fatal(err)
		}
	}
	startAt := strconv.FormatInt(time.Now().Add(500*time.Millisecond).UnixNano(), 10)
	outs := map[string]*strings.Builder{}
	var cmds []*exec.Cmd
	for _, g := range []string{"a", "b"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCatalogLockTwoProcesses$", "-test.count=1")
		cmd.Env = append(os.Environ(), "VMVAULT_TEST_LOCK_HELPER="+c.dir, "VMVAULT_TEST_LOCK_GROUP="+g, "VMVAULT_TEST_LOCK_START="+startAt)
		outs[g] = &strings.Builder{}
		cmd.Stdout, cmd.Stderr = outs[g], os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper: %v", err)
		}
	}
	won := map[string][]string{} // vm -> groups that reported success
	for g, out := range outs {
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			if vm, ok := strings.CutPrefix(sc.Text(), "added "); ok {
				won[vm] = append(won[vm], g)
			}
		}
	}
	for i := range n {
		name := fmt.Sprintf("vm%02d", i)
		vm, err := cat.FindVM(name)
		if err != nil {
			t.Fatal(err)
		}
		if w := won[name]; len(w) != 1 || vm.Group != w[0] {
			t.Errorf("%s: added by %v, now in group %q", name, w, vm.Group)
		}
	}
}

// lockHelper is the child of TestCatalogLockTwoProcesses: it adds vm00,
// vm01 ... to group, one call each, and prints "added <vm>" for each
// success.
func lockHelper(dir, group, startAt string) {
	cat := &Catalog{cat: &catalog{dir: dir}}
	ns, _ := strconv.ParseInt(startAt, 10, 64)
	time.Sleep(time.Until(time.Unix(0, ns)))
	for i := 0; ; i++ {
		name := fmt.Sprintf("vm%02d", i)
		if _, err := cat.FindVM(name); err != nil {
			return
		}
		changed, err := cat.AddToGroup(group, name)
		if err == nil && len(changed) == 1 {
			fmt.Printf("added %s\n", name)
		}
	}
}
