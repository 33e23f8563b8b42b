package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmvault/vmvault/chunkstore"
	"github.com/vmvault/vmvault/vhdxfs"
	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

// BackupOptions describe one backup of one VM.
type BackupOptions struct {
	VM string // VM name (required)
	// Group, when set, must name an existing protection group (see
	// CreateGroup): the VM joins it (a VM already in another group is
	// refused) and the recovery point records it.
	Group   string
	Sources []string // disk files, raw images or Hyper-V VM folders
	// Full ("express full") reads and chunks everything even when the VM
	// has an earlier recovery point; only chunks dedup does not know are
	// stored.
	Full bool
	// PreHook and PostHook run through "sh -c". A successful pre-hook makes
	// the recovery point application-consistent; the post-hook runs
	// whatever happens once the pre-hook was attempted.
	PreHook, PostHook    string
	RequireAppConsistent bool
	// KeepPagefile backs up the data of pagefile.sys, hiberfil.sys and
	// swapfile.sys on the guest's NTFS volumes. By default it is left out
	// (vhdxfs.PageFileRanges): those clusters restore as zeros (Windows
	// recreates the files) and would otherwise dominate incrementals. The
	// manifest records every file left out (DiskManifest.ExcludedFiles).
	KeepPagefile bool
	HookOutput   io.Writer // default os.Stderr
	// Progress, if set, is called from worker goroutines with the bytes
	// read so far and the total to read (allocated bytes of changed disks).
	Progress func(done, total int64)
	// Logf, if set, receives one line per notable step.
	Logf func(format string, args ...any)
	// Limit, if set, is called before each read of n source bytes and may
	// block to hold a bandwidth budget (throttle.Limiter.WaitN fits).
	Limit func(ctx context.Context, n int) error
	// Workers is the number of segments processed at once (default
	// max(2, CPUs+1): while one waits for a read the others chunk).
	Workers int
	// now is the clock (tests).
	now func() time.Time
	// trigger and vmGUID are set by the scheduler (schedule.go): the
	// schedule kinds that made the backup due (recorded in the job), and
	// the VM's GUID, so sources without a .vmcx still find their VM when
	// several share its name.
	trigger, vmGUID string
}

// BackupResult is the summary of a backup.
type BackupResult struct {
	Pointer  *Pointer
	Manifest *Manifest
	Duration time.Duration
	// Warnings are problems that did not fail the backup (a volume whose
	// page files could not be mapped, so they were backed up after all).
	// They are in Manifest.Warnings and the job record too.
	Warnings []string
	// Stages says where the time went (not stored in the manifest).
	Stages BackupStages
}

func (o *BackupOptions) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}

// Backup creates a recovery point of a VM from its sources. Nothing is
// listed until everything (data, then manifest) is durable and the
// pointer file is committed; any error or crash before leaves no recovery
// point.
func (r *Repo) Backup(ctx context.Context, o BackupOptions) (res *BackupResult, err error) {
	if o.VM == "" {
		return nil, errors.New("engine: backup: VM name required")
	}
	job := r.startJob("backup", o.VM)
	job.Group, job.Trigger = o.Group, o.trigger
	defer func() {
		if res != nil {
			job.RP, job.Full = res.Pointer.ID, res.Manifest.Full
			job.BytesRead, job.BytesNew, job.BytesStored = res.Manifest.BytesRead, res.Manifest.BytesNew, res.Manifest.BytesStored
			job.Warnings = res.Warnings
		}
		r.finishJob(job, err)
	}()
	// A pack write that failed in an earlier backup of this Repo (a full
	// disk) must not fail this one once the cause is gone: a mount serves
	// every backup through one long-lived Repo. One backup at a time per
	// Repo (see Repo), so no stream that saw the failure can still commit.
	// If packs are still in flight the call fails and this backup's flush
	// reports the old error, which is right too.
	_ = r.store.ResumeWrites()
	now := o.now
	if now == nil {
		now = time.Now
	}
	wallStart := time.Now()
	var stages BackupStages
	start := now().UTC().Truncate(time.Second)
	if o.Group != "" {
		if _, err := r.Group(o.Group); err != nil {
			return nil, fmt.Errorf("engine: backup: %w", err)
		}
	}
	// A restore --to original killed midway leaves its journal behind;
	// finish it first so this backup never reads a half-restored VM.
	r.recoverBeforeCheck(r.logf)
	plan, err := planSources(o.Sources)
	if err != nil {
		return nil, err
	}
	guid := plan.vmGUID
	if guid == "" {
		guid = o.vmGUID
	}
	vm, err := r.resolveVM(o.VM, guid, o.Group, start)
	if err != nil {
		return nil, err
	}
	job.VMGUID, job.Group = vm.GUID, vm.Group

	// Previous recovery point for incremental reuse.
	var prev *Manifest
	if !o.Full {
		if ids, _ := r.cat.rpIDs(vm.GUID); len(ids) > 0 {
			prev, err = r.LoadManifest(ctx, vm.GUID, ids[len(ids)-1])
			if err != nil {
				// A damaged previous manifest must not block new backups:
				// fall back to a full read (dedup still saves the space).
				o.logf("previous recovery point %s unreadable (%v); reading everything", ids[len(ids)-1], err)
				prev = nil
			}
		}
	}

	host, _ := os.Hostname()
	m := &Manifest{Version: ManifestVersion, VM: vm.Name, VMGUID: vm.GUID, Group: vm.Group,
		Time: start, Host: host, Full: prev == nil, Sources: plan.args, Consistency: CrashConsistent}
	if prev != nil {
		m.Parent = prev.ID
	}

	// Consistency: freeze (pre-hook), capture, thaw (post-hook, always).
	hookOut := o.HookOutput
	if hookOut == nil {
		hookOut = os.Stderr
	}
	postDone := false
	runPost := func() error {
		if postDone || o.PostHook == "" {
			return nil
		}
		postDone = true
		if herr := runHook(ctx, o.PostHook, "post", vm, hookOut); herr != nil {
			o.logf("post-hook failed: %v", herr)
			return herr
		}
		return nil
	}
	defer runPost()
	if o.PreHook != "" {
		if herr := runHook(ctx, o.PreHook, "pre", vm, hookOut); herr != nil {
			if o.RequireAppConsistent {
				return nil, fmt.Errorf("engine: backup: %w: %v", ErrHookFailed, herr)
			}
			o.logf("pre-hook failed (%v): recovery point will be crash-consistent", herr)
		} else {
			m.Consistency = AppConsistent
		}
	} else if o.RequireAppConsistent {
		return nil, fmt.Errorf("engine: backup: application consistency required but no pre-hook given: %w", ErrHookFailed)
	}

	disks, err := openDisks(plan)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, d := range disks {
			d.disk.Close()
		}
	}()

	// Decide per disk: unchanged (reuse without reading) or read.
	prevDisks := map[string]*DiskManifest{}
	if prev != nil {
		for i := range prev.Disks {
			prevDisks[prev.Disks[i].Name] = &prev.Disks[i]
		}
	}
	var total int64
	type todo struct {
		od   *openDisk
		prev *DiskManifest
	}
	var work []todo
	// A previous disk matched by name or disk ID is taken; the disks left
	// unmatched on both sides are paired by virtual size below (a disk
	// copied or converted to a new file, with a new name and disk ID).
	// Any pairing is safe: reuse is decided by content hashes.
	pds := make([]*DiskManifest, len(disks))
	claimed := map[*DiskManifest]bool{}
	for i, od := range disks {
		pd := prevDisks[od.name]
		if pd == nil && prev != nil {
			pd = matchByDiskID(prev, od.disk.Identity())
		}
		if pd != nil {
			pds[i] = pd
			claimed[pd] = true
		}
	}
	for i, od := range disks {
		if pds[i] != nil || prev == nil {
			continue
		}
		for j := range prev.Disks {
			if pd := &prev.Disks[j]; !claimed[pd] && pd.Identity.VirtualSize == od.disk.Size() && pd.SegmentSize == SegmentSize {
				pds[i] = pd
				claimed[pd] = true
				o.logf("%s: no previous disk of that name or disk ID; comparing with %s of the same size", od.name, pd.Name)
				break
			}
		}
	}
	for i, od := range disks {
		pd := pds[i]
		// A disk whose page files were left out last time must be read
		// when they are wanted now: its stored extents lack them.
		if pd != nil && unchanged(pd, od) && !(o.KeepPagefile && pd.excludedSomething()) {
			ok, err := allPresent(ctx, r.store, flatExtents(pd))
			if err != nil {
				return nil, fmt.Errorf("engine: backup: %w", err)
			}
			if ok {
				dm := *pd
				dm.Name, dm.Source, dm.RelDir, dm.SourceFiles = od.name, od.path, od.relDir, od.files
				dm.BytesRead, dm.BytesNew, dm.BytesStored, dm.BytesChunked = 0, 0, 0, 0
				dm.Unchanged, dm.SegmentsReused = true, len(dm.Segments)
				m.Disks = append(m.Disks, dm)
				o.logf("%s: unchanged since %s, not read", od.name, prev.ID)
				continue
			}
		}
		work = append(work, todo{od, pd})
		total += vdisk.AllocatedBytes(od.disk.Allocated())
	}

	var done atomic.Int64
	onRead := func(n int64) {
		v := done.Add(n)
		if o.Progress != nil {
			o.Progress(v, total)
		}
	}
	if o.Progress != nil {
		o.Progress(0, total)
	}
	workers := o.Workers
	if workers <= 0 {
		workers = DefaultWorkers()
	}
	stages.Workers = workers
	clock := &stageClock{}
	disksStart := time.Now()
	stages.Plan = disksStart.Sub(wallStart)
	for _, w := range work {
		dm, err := r.backupDisk(ctx, w.od, w.prev, workers, onRead, !o.KeepPagefile, o.Limit, clock)
		if err != nil {
			return nil, err
		}
		for _, w := range dm.Warnings {
			o.logf("warning: %s", w)
		}
		for _, f := range dm.ExcludedFiles {
			o.logf("%s: left out p%d/%s (%s of %s file)", dm.Name, f.Volume, f.Path, fmtBytes(f.BytesExcluded), fmtBytes(f.Size))
		}
		m.Warnings = append(m.Warnings, dm.Warnings...)
		stages.BytesRead += dm.BytesRead
		stages.BytesData += dm.BytesData
		stages.BytesChunked += dm.BytesChunked
		stages.SegmentsReused += dm.SegmentsReused
		stages.Segments += len(dm.Segments)
		o.logf("%s: read %s, new %s, %d of %d segments reused", dm.Name, fmtBytes(dm.BytesRead), fmtBytes(dm.BytesNew), dm.SegmentsReused, len(dm.Segments))
		m.Disks = append(m.Disks, *dm)
	}
	stages.Disks = time.Since(disksStart)
	clock.fill(&stages)
	for _, pc := range plan.configs {
		cf, st, err := r.backupConfig(ctx, pc)
		if err != nil {
			return nil, err
		}
		m.Config = append(m.Config, cf)
		m.BytesRead += cf.Size
		m.BytesNew += st.NewBytes
		m.BytesStored += st.StoredBytes
	}
	// Data captured: thaw the guest before the slow durable part.
	if err := runPost(); err != nil && o.RequireAppConsistent {
		return nil, fmt.Errorf("engine: backup: post-hook: %w", err)
	}
	for _, d := range m.Disks {
		m.BytesRead += d.BytesRead
		m.BytesNew += d.BytesNew
		m.BytesStored += d.BytesStored
	}
	flushStart := time.Now()
	if err := r.store.Flush(ctx); err != nil {
		return nil, fmt.Errorf("engine: backup: flush data: %w", err)
	}
	commitStart := time.Now()
	stages.Flush = commitStart.Sub(flushStart)
	m.EndTime = now().UTC()

	// The manifest is stored as chunks; its ID is fixed at commit, so the
	// stored manifest carries the time and the pointer carries the ID.
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("engine: backup: %w", err)
	}
	refs, _, err := storeStream(ctx, r.store, mb)
	if err != nil {
		return nil, fmt.Errorf("engine: backup: store manifest: %w", err)
	}
	if err := r.store.Flush(ctx); err != nil {
		return nil, fmt.Errorf("engine: backup: flush manifest: %w", err)
	}
	p := m.pointer()
	p.Manifest, p.ManifestSize, p.ManifestSHA256 = refs, int64(len(mb)), sha256Hex(mb)
	if err := r.cat.commitPointer(p); err != nil {
		return nil, fmt.Errorf("engine: backup: commit recovery point: %w", err)
	}
	m.ID = p.ID
	stages.Commit = time.Since(commitStart)
	stages.Wall = time.Since(wallStart)
	return &BackupResult{Pointer: p, Manifest: m, Duration: time.Since(start), Warnings: m.Warnings, Stages: stages}, nil
}

// resolveVM finds or creates the VM record: by the GUID of its .vmcx when
// there is one (a renamed VM keeps its history), else by name.
func (r *Repo) resolveVM(name, guid, group string, now time.Time) (VM, error) {
	// Read-modify-write of the VM record: under the catalog write lock, so
	// a concurrent `group add` or rename is not lost.
	unlock, err := r.cat.lock()
	if err != nil {
		return VM{}, fmt.Errorf("engine: backup: %w", err)
	}
	defer unlock()
	vms, err := r.cat.vms()
	if err != nil {
		return VM{}, fmt.Errorf("engine: catalog: %w", err)
	}
	var found *VM
	for i := range vms {
		if guid != "" && vms[i].GUID == guid {
			found = &vms[i]
			break
		}
	}
	if found == nil && guid == "" {
		if vm, err := r.cat.findVM(name); err == nil {
			found = &vm
		}
	}
	if found != nil {
		vm := *found
		changed := false
		if vm.Name != name {
			vm.Name, changed = name, true
		}
		if group != "" && vm.Group != group {
			// Moving between groups is explicit (group remove, group
			// add); a stale name of a deleted group may be replaced.
			if vm.Group != "" && r.groupExists(vm.Group) {
				return VM{}, fmt.Errorf("engine: backup: VM %s is in group %s, not %s (move it with: vmvault group remove %s %s; vmvault group add %s %s)",
					vm.Name, vm.Group, group, vm.Group, vm.Name, group, vm.Name)
			}
			vm.Group, changed = group, true
		}
		if changed {
			if err := r.cat.putVM(vm); err != nil {
				return VM{}, fmt.Errorf("engine: catalog: %w", err)
			}
		}
		return vm, nil
	}
	vm := VM{Name: name, GUID: guid, Group: group, Created: now, GUIDSource: "vmcx"}
	if guid == "" {
		vm.GUID, vm.GUIDSource = newGUID(), "generated"
	}
	if err := r.cat.putVM(vm); err != nil {
		return VM{}, fmt.Errorf("engine: catalog: %w", err)
	}
	return vm, nil
}

// unchanged reports whether a disk can be taken from the previous
// recovery point without reading it: same identity (for VHDX the
// DataWriteGuid changes on every data write), same size, and the same
// size and mtime of every file it is read from (leaf and parent).
func unchanged(pd *DiskManifest, od *openDisk) bool {
	id := od.disk.Identity()
	pid := pd.Identity
	if id.Format != pid.Format || id.DataWriteGUID != pid.DataWriteGUID || id.DiskID != pid.DiskID ||
		id.VirtualSize != pid.VirtualSize || id.ChainLength != pid.ChainLength || pd.SegmentSize != SegmentSize {
		return false
	}
	if len(pd.SourceFiles) != len(od.files) {
		return false
	}
	for i, f := range od.files {
		if f != pd.SourceFiles[i] || f.ModTime == 0 {
			return false
		}
	}
	return true
}

// matchByDiskID finds the previous disk with the same VHDX disk ID: after
// a checkpoint the leaf is a new .avhdx with another file name.
func matchByDiskID(prev *Manifest, id vdisk.Identity) *DiskManifest {
	if id.DiskID.IsZero() {
		return nil
	}
	for i := range prev.Disks {
		if prev.Disks[i].Identity.DiskID == id.DiskID && prev.Disks[i].Identity.VirtualSize == id.VirtualSize {
			return &prev.Disks[i]
		}
	}
	return nil
}

func flatExtents(d *DiskManifest) []Extent {
	var out []Extent
	for _, s := range d.Segments {
		out = append(out, s.Extents...)
	}
	return out
}

// backupDisk reads a disk's allocated ranges segment by segment, workers
// segments at a time, and returns its manifest entry. Segments whose hash
// equals the previous backup's reuse its extents without chunking.
func (r *Repo) backupDisk(ctx context.Context, od *openDisk, prev *DiskManifest, workers int, onRead func(int64), excludePagefile bool, limit func(context.Context, int) error, clock *stageClock) (*DiskManifest, error) {
	id := od.disk.Identity()
	alloc := vdisk.NormalizeExtents(od.disk.Allocated(), od.disk.Size())
	dm := &DiskManifest{Name: od.name, Source: od.path, SourceFiles: od.files, RelDir: od.relDir,
		Identity: id, SegmentSize: SegmentSize, BytesAllocated: vdisk.AllocatedBytes(alloc)}
	if excludePagefile {
		t := time.Now()
		alloc = excludePageFiles(od.disk, alloc, dm)
		since(&clock.plan, t)
	}
	prevSeg := map[int64]*Segment{}
	if prev != nil && prev.SegmentSize == SegmentSize {
		for i := range prev.Segments {
			prevSeg[prev.Segments[i].Off] = &prev.Segments[i]
		}
	}
	offs, pieces := splitSegments(alloc, SegmentSize)
	results := make([]segResult, len(offs))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	workers = max(1, min(workers, len(offs)))
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := newSegWorker(r.store, clock)
			w.limit = limit
			for {
				i := int(next.Add(1) - 1)
				if i >= len(offs) || ctx.Err() != nil {
					return
				}
				res, err := w.process(ctx, od.disk, offs[i], pieces[i], prevSeg[offs[i]], onRead)
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
				results[i] = res
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("engine: backup: disk %s (%s): %w", od.name, od.path, firstErr)
	}
	for _, res := range results {
		dm.BytesRead += res.read
		if res.empty {
			continue
		}
		dm.Segments = append(dm.Segments, res.seg)
		dm.BytesData += res.data
		dm.BytesNew += res.stats.NewBytes
		dm.BytesStored += res.stats.StoredBytes
		dm.BytesChunked += res.chunked
		if res.reused {
			dm.SegmentsReused++
		}
	}
	return dm, nil
}

// excludePageFiles removes the clusters of the guest's page, hibernation
// and swap files (vhdxfs.PageFileRanges) from the allocation map alloc and
// records in dm what was left out. Nothing here fails the backup: whatever
// cannot be mapped is backed up and becomes a warning.
func excludePageFiles(d vdisk.Disk, alloc []vdisk.Extent, dm *DiskManifest) []vdisk.Extent {
	pfs, warns, err := vhdxfs.PageFileRanges(d)
	for _, w := range warns {
		dm.Warnings = append(dm.Warnings, dm.Name+": "+w)
	}
	if err != nil {
		// The partition table (a disk without one is volume p0, not an
		// error) could not be read: back up the whole allocation.
		dm.Warnings = append(dm.Warnings, fmt.Sprintf("%s: page files not looked for (backed up if any): %v", dm.Name, err))
		return alloc
	}
	for _, pf := range pfs {
		before := vdisk.AllocatedBytes(alloc)
		alloc = subtractExtents(alloc, vdisk.NormalizeExtents(pf.Extents, d.Size()))
		n := before - vdisk.AllocatedBytes(alloc)
		dm.ExcludedFiles = append(dm.ExcludedFiles, ExcludedFile{Volume: pf.Volume, Path: pf.Path, Size: pf.Size, BytesExcluded: n})
		dm.ExcludedBytes += n
	}
	return alloc
}

// subtractExtents removes the sorted, non-overlapping ranges ex from the
// sorted, non-overlapping extents alloc.
func subtractExtents(alloc, ex []vdisk.Extent) []vdisk.Extent {
	if len(ex) == 0 {
		return alloc
	}
	var out []vdisk.Extent
	j := 0
	for _, a := range alloc {
		off, end := a.Off, a.End()
		for j < len(ex) && ex[j].End() <= off {
			j++
		}
		for k := j; k < len(ex) && ex[k].Off < end; k++ {
			if ex[k].Off > off {
				out = append(out, vdisk.Extent{Off: off, Len: ex[k].Off - off})
			}
			off = max(off, ex[k].End())
		}
		if off < end {
			out = append(out, vdisk.Extent{Off: off, Len: end - off})
		}
	}
	return out
}

// backupConfig stores one configuration file byte for byte.
func (r *Repo) backupConfig(ctx context.Context, pc plannedConfig) (ConfigFile, chunkstore.Stats, error) {
	cf := ConfigFile{Name: pc.rel, Source: pc.path}
	f, err := os.Open(pc.path)
	if err != nil {
		return cf, chunkstore.Stats{}, fmt.Errorf("engine: backup: config file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil {
		cf.ModTime = fi.ModTime().UTC()
	}
	h := sha256.New()
	st, err := r.store.Ingest(ctx, io.TeeReader(f, h), func(ref chunkstore.Ref) {
		cf.Chunks = append(cf.Chunks, ChunkRef{ID: ChunkID(ref.ID), Len: int64(ref.Length)})
		cf.Size += int64(ref.Length)
	})
	if err != nil {
		return cf, st, fmt.Errorf("engine: backup: config file %s: %w", pc.path, err)
	}
	cf.SHA256 = hex.EncodeToString(h.Sum(nil))
	return cf, st, nil
}

// runHook runs a consistency hook with sh -c; the VM's identity and the
// phase are in the environment.
func runHook(ctx context.Context, command, phase string, vm VM, out io.Writer) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Env = append(os.Environ(), "VMVAULT_VM="+vm.Name, "VMVAULT_VM_GUID="+vm.GUID, "VMVAULT_HOOK="+phase)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s-hook %q: %w", phase, command, err)
	}
	return nil
}

// fmtBytes formats a byte count with binary units.
func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
