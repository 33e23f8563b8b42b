package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Job results.
const (
	JobRunning     = "running"
	JobOK          = "ok"
	JobFailed      = "failed"
	JobInterrupted = "interrupted" // the process died while it ran
)

// Job is the record of one backup, restore, check, forget or prune (also
// of dry runs, which say so).
type Job struct {
	ID           string    `json:"id"`
	Kind         string    `json:"kind"` // backup, restore, check, forget, prune
	VM           string    `json:"vm,omitempty"`
	VMGUID       string    `json:"vm_guid,omitempty"`
	Group        string    `json:"group,omitempty"`
	RP           string    `json:"rp,omitempty"`
	DryRun       bool      `json:"dry_run,omitempty"`
	Start        time.Time `json:"start"`
	End          time.Time `json:"end,omitzero"`
	Result       string    `json:"result"`
	Error        string    `json:"error,omitempty"`
	BytesRead    int64     `json:"bytes_read"`
	BytesNew     int64     `json:"bytes_new"`
	BytesStored  int64     `json:"bytes_stored"`
	BytesWritten int64     `json:"bytes_written"`
	Host         string    `json:"host"`
	PID          int       `json:"pid"`
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
	j := &Job{ID: now.Format("20060102T150405.000000000Z") + "-" + kind + "-" + randHex(3),
		Kind: kind, VM: vm, Start: now, Result: JobRunning, Host: host, PID: os.Getpid()}
	r.putJob(j)
	return j
}

func (r *Catalog) finishJob(j *Job, err error) {
	j.End = time.Now().UTC()
	j.Result = JobOK
	if err != nil {
		j.Result, j.Error = JobFailed, err.Error()
	}
	r.putJob(j)
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
