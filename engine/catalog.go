package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vmvault/vmvault/internal/flock"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

const (
	catalogDir = "catalog"
	vmsDir     = "catalog/vms"
	rpsDir     = "catalog/rps"
	jobsDir    = "catalog/jobs"
	groupsDir  = "catalog/groups"
	// rpIDLayout is the UTC creation time of a recovery point (DESIGN.md).
	rpIDLayout = "2006-01-02T150405Z"
)

// VM is a protected virtual machine. Protection follows the GUID: a VM
// renamed on the host keeps its recovery points.
type VM struct {
	Name    string    `json:"name"`
	GUID    string    `json:"guid"`
	Group   string    `json:"group,omitempty"`
	Created time.Time `json:"created"`
	// GUIDSource says where the GUID came from: "vmcx" (the VM's own
	// configuration file name) or "generated" (no .vmcx was backed up).
	GUIDSource string `json:"guid_source"`
	// Sources, when set, are what the scheduler backs the VM up from
	// (absolute disk file and VM folder paths, SetVMSources) instead of
	// the sources of its latest recovery point: an administrator can point
	// it at a moved VM, or schedule one never backed up by hand. Records
	// written before this field have none and keep the old behaviour.
	Sources []string `json:"sources,omitempty"`
}

// catalog is the directory of small JSON files beside the chunkstore. Every
// write is temp+fsync+rename(or link)+dir fsync with mode 0600, and readers
// never lock: a file is either absent or complete.
//
// Writers that read, decide and write (group membership, VM records,
// forget) hold the catalog write lock (lock) around that section, so two
// processes (two `group add`, a `forget` and a backup) cannot lose each
// other's update. Writes that cannot conflict take no lock: a new
// recovery point's pointer (linked under a fresh name), job records (one
// file per job), restore journals.
type catalog struct{ dir string }

// catalogLockFile is the catalog write lock (internal/flock: released by
// the kernel when its holder dies, so it is never stale).
const catalogLockFile = "catalog/lock"

// catalogLockTimeout bounds the wait for the catalog write lock. Holders
// keep it for a few file writes; a wait this long means a hung process.
var catalogLockTimeout = 30 * time.Second

// lock takes the catalog write lock and returns its release. It is not
// re-entrant: a holder must not call anything that takes it again.
func (c *catalog) lock() (unlock func(), err error) {
	if err := os.MkdirAll(c.path(catalogDir), 0o700); err != nil {
		return nil, fmt.Errorf("catalog lock: %w", err)
	}
	l, err := flock.Wait(context.Background(), c.path(catalogLockFile), catalogLockTimeout)
	if errors.Is(err, flock.ErrLocked) {
		return nil, fmt.Errorf("catalog lock %s held by another process for %v: %w", c.path(catalogLockFile), catalogLockTimeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("catalog lock: %w", err)
	}
	return func() { l.Unlock() }, nil
}

func (c *catalog) path(rel ...string) string {
	return filepath.Join(append([]string{c.dir}, rel...)...)
}

// writeFileAtomic writes data to path durably: temp file in the same
// directory, fsync, rename, directory fsync. With noClobber it links
// instead of renaming, so an existing file is never replaced
// (os.ErrExist).
func writeFileAtomic(path string, data []byte, noClobber bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if noClobber {
		if err = os.Link(tmp, path); err != nil {
			return err
		}
		os.Remove(tmp)
	} else if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory so renames and links in it are durable.
// Windows cannot open directories for sync; NTFS journals renames.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDirErr(dir string) error {
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("engine: sync %s: %w", dir, err)
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w: %v", path, ErrCorrupt, err)
	}
	return nil
}

// vms lists every VM record (unreadable ones are skipped: a damaged
// record must not hide the others).
func (c *catalog) vms() ([]VM, error) {
	ents, err := os.ReadDir(c.path(vmsDir))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []VM
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || !strings.HasSuffix(n, ".json") {
			continue
		}
		var vm VM
		if readJSON(c.path(vmsDir, n), &vm) == nil && vm.GUID != "" {
			out = append(out, vm)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].GUID < out[j].GUID
	})
	return out, nil
}

func (c *catalog) putVM(vm VM) error {
	b, err := json.MarshalIndent(vm, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(c.path(vmsDir, vm.GUID+".json"), b, false)
}

// vm reads the record of the VM with GUID guid (ErrUnknownVM when there
// is none). It reads one file, unlike findVM, so the scheduler can look a
// member up per backup without listing the catalog.
func (c *catalog) vm(guid string) (VM, error) {
	g, err := vdisk.ParseGUID(guid)
	if err != nil {
		return VM{}, fmt.Errorf("%q: %w", guid, ErrUnknownVM)
	}
	var vm VM
	if err := readJSON(c.path(vmsDir, g.String()+".json"), &vm); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return VM{}, fmt.Errorf("%q: %w", guid, ErrUnknownVM)
		}
		return VM{}, err
	}
	return vm, nil
}

// findVM resolves a VM by GUID or by name. Several VMs may share a name
// (two hosts, or a re-created VM); the one with a recovery point most
// recently is taken, and a GUID always disambiguates.
func (c *catalog) findVM(nameOrGUID string) (VM, error) {
	vms, err := c.vms()
	if err != nil {
		return VM{}, err
	}
	if g, perr := vdisk.ParseGUID(nameOrGUID); perr == nil {
		for _, vm := range vms {
			if vm.GUID == g.String() {
				return vm, nil
			}
		}
	}
	var cands []VM
	for _, vm := range vms {
		if vm.Name == nameOrGUID {
			cands = append(cands, vm)
		}
	}
	if len(cands) == 0 {
		return VM{}, fmt.Errorf("%q: %w", nameOrGUID, ErrUnknownVM)
	}
	best, bestRP := cands[0], ""
	for _, vm := range cands {
		ids, _ := c.rpIDs(vm.GUID)
		if n := len(ids); n > 0 && compareRPID(ids[n-1], bestRP) > 0 {
			best, bestRP = vm, ids[n-1]
		}
	}
	return best, nil
}

// newGUID returns a random (version 4) GUID.
func newGUID() string {
	var g vdisk.GUID
	if _, err := rand.Read(g[:]); err != nil {
		panic(err)
	}
	g[6] = g[6]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	return g.String()
}

// rpIDs lists the committed recovery point IDs of a VM, oldest first.
func (c *catalog) rpIDs(guid string) ([]string, error) {
	ents, err := os.ReadDir(c.path(rpsDir, guid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || !strings.HasSuffix(n, ".json") {
			continue // temp files of an interrupted commit
		}
		id := strings.TrimSuffix(n, ".json")
		if _, _, ok := parseRPID(id); ok {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return compareRPID(ids[i], ids[j]) < 0 })
	return ids, nil
}

// parseRPID splits "2026-11-26T104233Z.2" into its time and sequence (1
// when there is no suffix).
func parseRPID(id string) (time.Time, int, bool) {
	base, suf, hasSuf := strings.Cut(id, ".")
	t, err := time.Parse(rpIDLayout, base)
	if err != nil {
		return time.Time{}, 0, false
	}
	seq := 1
	if hasSuf {
		n, err := strconv.Atoi(suf)
		if err != nil || n < 2 {
			return time.Time{}, 0, false
		}
		seq = n
	}
	return t, seq, true
}

// compareRPID orders recovery point IDs by time then sequence (".10" after
// ".9", which a string comparison gets wrong). "" sorts first.
func compareRPID(a, b string) int {
	ta, sa, oka := parseRPID(a)
	tb, sb, okb := parseRPID(b)
	switch {
	case !oka && !okb:
		return strings.Compare(a, b)
	case !oka:
		return -1
	case !okb:
		return 1
	}
	if c := ta.Compare(tb); c != 0 {
		return c
	}
	return sa - sb
}

// rpIDFor formats the ID of a recovery point taken at t with sequence seq.
func rpIDFor(t time.Time, seq int) string {
	id := t.UTC().Format(rpIDLayout)
	if seq > 1 {
		id += "." + strconv.Itoa(seq)
	}
	return id
}

// commitPointer writes the pointer file of a new recovery point under the
// first free ID for its time: the link fails if another commit took the
// name, and we take the next suffix. This is the commit point of a backup.
func (c *catalog) commitPointer(p *Pointer) error {
	dir := c.path(rpsDir, p.VMGUID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	for seq := 1; seq < 10000; seq++ {
		p.ID = rpIDFor(p.Time, seq)
		b, err := json.MarshalIndent(p, "", "  ")
		if err != nil {
			return err
		}
		err = writeFileAtomic(filepath.Join(dir, p.ID+".json"), b, true)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		return err
	}
	return fmt.Errorf("no free recovery point ID at %s", p.Time)
}

func (c *catalog) pointer(guid, id string) (*Pointer, error) {
	var p Pointer
	if err := readJSON(c.path(rpsDir, guid, id+".json"), &p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", id, ErrUnknownRP)
		}
		return nil, err
	}
	return &p, nil
}

// randHex returns n random bytes in hex (job IDs).
func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
