package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Job results.
const (
	JobRunning = "running"
	JobOK      = "ok"
	JobFailed  = "failed"
	// JobInterrupted: the process died while the job ran, or the job was
	// cancelled (SIGINT/SIGTERM) and stopped cleanly without a result.
	JobInterrupted = "interrupted"
)

// Job is the record of one backup, restore, check, forget or prune (also
// of dry runs, which say so).
type Job struct {
	ID     string    `json:"id"`
	Kind   string    `json:"kind"` // backup, restore, check, forget, prune
	VM     string    `json:"vm,omitempty"`
	VMGUID string    `json:"vm_guid,omitempty"`
	Group  string    `json:"group,omitempty"`
	RP     string    `json:"rp,omitempty"`
	DryRun bool      `json:"dry_run,omitempty"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end,omitzero"`
	Result string    `json:"result"`
	Error  string    `json:"error,omitempty"`
	// Full marks a backup that read and chunked everything (an express
	// full, or a VM's first backup).
	Full bool `json:"full,omitempty"`
	// Trigger is set on backups the scheduler ran: the schedule kinds that
	// made it due ("sync", "recovery point", "express full"), comma-joined.
	Trigger string `json:"trigger,omitempty"`
	// Byte counters, by kind. backup: read from the sources, new (not in
	// the repository before) and stored (after compression, before
	// parity). restore: written (disk data and configuration files).
	// check: read (manifests, and with --read-data every shard's data and
	// parity). Counters a kind does not use stay 0.
	BytesRead    int64  `json:"bytes_read"`
	BytesNew     int64  `json:"bytes_new"`
	BytesStored  int64  `json:"bytes_stored"`
	BytesWritten int64  `json:"bytes_written"`
	Host         string `json:"host"`
	PID          int    `json:"pid"`
	// Forgotten lists the recovery points a forget removed (or, in a dry
	// run, would remove), as "<vm>/<rp-id>".
	Forgotten []string `json:"forgotten,omitempty"`
	// Warnings are problems that did not fail the job.
	Warnings []string `json:"warnings,omitempty"`
}

// startJob records a running job. Job records are best effort: failing to
// write one never fails the job itself. It is a Catalog method so that
// catalog-only commands (forget) leave records too.
func (r *Catalog) startJob(kind, vm string) *Job {
	host, _ := os.Hostname()
	now := time.Now().UTC()
	j := &Job{ID: now.Format(jobIDLayout) + "-" + kind + "-" + randHex(3),
		Kind: kind, VM: vm, Start: now, Result: JobRunning, Host: host, PID: os.Getpid()}
	r.putJob(j)
	return j
}

func (r *Catalog) finishJob(j *Job, err error) {
	j.End = time.Now().UTC()
	j.Result = JobOK
	switch {
	case errors.Is(err, context.Canceled):
		j.Result, j.Error = JobInterrupted, err.Error()
	case err != nil:
		j.Result, j.Error = JobFailed, err.Error()
	}
	r.putJob(j)
}

// jobIDLayout is the time prefix of a job ID (and of its file name).
const jobIDLayout = "20060102T150405.000000000Z"

// jobNameInfo parses a job file name "<time>-<kind>-<hex>.json".
func jobNameInfo(name string) (start time.Time, kind string, ok bool) {
	id, isJSON := strings.CutSuffix(name, ".json")
	ts, rest, found := strings.Cut(id, "-")
	if !isJSON || !found || strings.HasPrefix(name, ".") {
		return time.Time{}, "", false
	}
	t, err := time.Parse(jobIDLayout, ts)
	if err != nil {
		return time.Time{}, "", false
	}
	kind, _, _ = strings.Cut(rest, "-")
	return t, kind, true
}

// jobCache keeps job records that can no longer change (finished ones),
// by file name, so a scheduler planning every minute reads only new files.
type jobCache struct{ jobs map[string]Job }

// recentJobs returns the records of kind started at or after since (by
// the time in their file names), oldest first. Finished records come from
// cache when given (and are added to it); entries no longer listed or
// older than since are dropped from it.
func (c *catalog) recentJobs(kind string, since time.Time, cache *jobCache) ([]Job, error) {
	ents, err := os.ReadDir(c.path(jobsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	var out []Job
	seen := map[string]bool{}
	for _, e := range ents {
		t, k, ok := jobNameInfo(e.Name())
		if !ok || k != kind || t.Before(since) {
			continue
		}
		seen[e.Name()] = true
		if cache != nil {
			if j, ok := cache.jobs[e.Name()]; ok {
				out = append(out, j)
				continue
			}
		}
		var j Job
		if readJSON(c.path(jobsDir, e.Name()), &j) != nil {
			continue // being replaced, or damaged: not history we can use
		}
		if cache != nil && j.Result != JobRunning {
			if cache.jobs == nil {
				cache.jobs = map[string]Job{}
			}
			cache.jobs[e.Name()] = j
		}
		out = append(out, j)
	}
	if cache != nil {
		for n := range cache.jobs {
			if !seen[n] {
				delete(cache.jobs, n)
			}
		}
	}
	sort.Slice(out, func(i, k int) bool { return out[i].ID < out[k].ID })
	return out, nil
}

// recordFailedJob leaves the record of a job that failed before the
// engine call that normally records it could run (the scheduler could
// not even start a member's backup).
func (r *Catalog) recordFailedJob(j Job, err error) {
	host, _ := os.Hostname()
	now := time.Now().UTC()
	j.ID = now.Format(jobIDLayout) + "-" + j.Kind + "-" + randHex(3)
	j.Start, j.Host, j.PID = now, host, os.Getpid()
	r.finishJob(&j, err)
}

// jobAlive reports whether a job still marked running really runs (its
// process exists; on another host it is assumed to).
func jobAlive(j Job, host string) bool {
	return j.Result == JobRunning && (j.Host != host || processAlive(j.PID))
}

func (r *Catalog) putJob(j *Job) {
	b, err := json.MarshalIndent(j, "", "  ")
	if err == nil {
		_ = writeFileAtomic(r.cat.path(jobsDir, j.ID+".json"), b, false)
	}
}

// ListJobs returns every job record, oldest first. A job still "running"
// whose process is gone (same host) is reported as interrupted.
func ListJobs(repoDir string) ([]Job, error) {
	c := &catalog{dir: repoDir}
	if _, err := os.Stat(c.path("config")); err != nil {
		return nil, fmt.Errorf("engine: %s: %w", repoDir, ErrNoRepository)
	}
	ents, err := os.ReadDir(c.path(jobsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("engine: jobs: %w", err)
	}
	host, _ := os.Hostname()
	var out []Job
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") || !strings.HasSuffix(n, ".json") {
			continue
		}
		var j Job
		if readJSON(c.path(jobsDir, n), &j) != nil {
			continue
		}
		if j.Result == JobRunning && j.Host == host && !processAlive(j.PID) {
			j.Result = JobInterrupted
		}
		out = append(out, j)
	}
	sort.Slice(out, func(i, k int) bool { return out[i].ID < out[k].ID })
	return out, nil
}

// processAlive reports whether pid exists (signal 0). Where that cannot be
// told, the job is assumed alive.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EPERM)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// packBytes sums the sizes of the shard files in the repository's pools
// (<pool>/packs/...): what a check with ReadData reads, every shard's data
// and parity in full. (Counted from the files because the chunkstore's
// check report has no byte count; a pool that cannot be walked counts 0.)
func (r *Repo) packBytes() int64 {
	var n int64
	for _, pool := range r.store.Config().Pools {
		if !filepath.IsAbs(pool) {
			pool = filepath.Join(r.dir, pool)
		}
		filepath.WalkDir(filepath.Join(pool, "packs"), func(_ string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() || strings.HasPrefix(d.Name(), ".") {
				return nil
			}
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
			return nil
		})
	}
	return n
}
