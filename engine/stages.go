package engine

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// BackupStages says where a backup's time went, stage by stage (the
// benchmark reports it; `vmvault backup --verbose` prints it as one line).
//
// The per-segment stages (Read .. Ingest) are summed over the segment
// workers, so together they can reach Workers times the wall time of the
// disk phase; Plan, Flush and Commit are the wall time of the one goroutine
// that runs them. Ingest is chunkstore.Ingest as the caller sees it: Rabin
// chunking (in the worker), hashing, dedup lookups, compression and pack
// writes (in the store's workers; a worker waits here when they are busy or
// when packs in flight hold back pressure).
type BackupStages struct {
	Workers int
	// Plan: open the disks, load the previous manifest, check that an
	// unchanged disk's chunks are all present, map the page files.
	Plan time.Duration
	// Disks: wall time of the segment phase (all disks).
	Disks time.Duration
	// Read: source reads (with throttle waits).
	Read time.Duration
	// ZeroScan: finding all-zero 64 KiB blocks.
	ZeroScan time.Duration
	// Hash: keyed BLAKE3 of each segment (change detection).
	Hash time.Duration
	// Reuse: reuse of the previous recovery point's chunks in changed
	// segments: presence checks and BLAKE3 verification of old chunks.
	Reuse time.Duration
	// Chunk: engine-side search for chunk boundaries in changed regions
	// (to find where a changed segment falls back into old chunks).
	Chunk time.Duration
	// Ingest: chunkstore.Ingest of new or changed data (see above).
	Ingest time.Duration
	// Flush: the final chunkstore Flush (last packs durable, index).
	Flush time.Duration
	// Commit: manifest stored and flushed, pointer committed.
	Commit time.Duration
	// Wall: the whole backup.
	Wall time.Duration

	Segments       int   // segments with data
	SegmentsReused int   // unchanged segments (hash equal): not chunked
	BytesRead      int64 // read from the sources
	BytesData      int64 // non-zero bytes
	BytesVerified  int64 // bytes of old chunks reused after BLAKE3 verification
	BytesChunked   int64 // bytes given to chunkstore.Ingest
}

// stageClock accumulates per-segment stage times from several workers.
type stageClock struct {
	read, zero, hash, reuse, chunk, ingest atomic.Int64
	plan, verified                         atomic.Int64
}

// since adds the time since t to c and returns now.
func since(c *atomic.Int64, t time.Time) time.Time {
	now := time.Now()
	c.Add(int64(now.Sub(t)))
	return now
}

func (c *stageClock) fill(s *BackupStages) {
	s.Plan += time.Duration(c.plan.Load())
	s.Disks -= time.Duration(c.plan.Load())
	s.Read += time.Duration(c.read.Load())
	s.ZeroScan += time.Duration(c.zero.Load())
	s.Hash += time.Duration(c.hash.Load())
	s.Reuse += time.Duration(c.reuse.Load())
	s.Chunk += time.Duration(c.chunk.Load())
	s.Ingest += time.Duration(c.ingest.Load())
	s.BytesVerified += c.verified.Load()
}

func secs(d time.Duration) float64 { return float64(d.Round(time.Millisecond)) / 1e9 }

// MarshalJSON writes durations as seconds.
func (s BackupStages) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]any{
		"workers": s.Workers, "plan_s": secs(s.Plan), "disks_s": secs(s.Disks),
		"read_s": secs(s.Read), "zero_scan_s": secs(s.ZeroScan), "hash_s": secs(s.Hash),
		"reuse_s": secs(s.Reuse), "chunk_s": secs(s.Chunk), "ingest_s": secs(s.Ingest),
		"flush_s": secs(s.Flush), "commit_s": secs(s.Commit), "wall_s": secs(s.Wall),
		"segments": s.Segments, "segments_reused": s.SegmentsReused,
		"bytes_read": s.BytesRead, "bytes_data": s.BytesData,
		"bytes_verified": s.BytesVerified, "bytes_chunked": s.BytesChunked,
	})
}

// String is the one-line summary.
func (s BackupStages) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "stages: wall %.2fs = plan %.2fs + disks %.2fs + flush %.2fs + commit %.2fs; worker time (%d workers) read %.2fs, zero-scan %.2fs, hash %.2fs, reuse %.2fs, chunk %.2fs, ingest %.2fs",
		secs(s.Wall), secs(s.Plan), secs(s.Disks), secs(s.Flush), secs(s.Commit), s.Workers,
		secs(s.Read), secs(s.ZeroScan), secs(s.Hash), secs(s.Reuse), secs(s.Chunk), secs(s.Ingest))
	fmt.Fprintf(&b, "; segments %d (%d reused); read %s, data %s, verified %s, ingested %s",
		s.Segments, s.SegmentsReused, fmtBytes(s.BytesRead), fmtBytes(s.BytesData), fmtBytes(s.BytesVerified), fmtBytes(s.BytesChunked))
	if s.Disks > 0 {
		fmt.Fprintf(&b, " (read %.0f MiB/s)", float64(s.BytesRead)/(1<<20)/s.Disks.Seconds())
	}
	return b.String()
}
