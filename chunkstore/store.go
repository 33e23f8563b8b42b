// Package chunkstore is vmvault's content-addressed chunk storage: byte
// streams are cut into content-defined chunks (restic/chunker), identified
// by a keyed BLAKE3 hash, deduplicated against a Badger index, stored as
// independently compressed (zstd) and optionally sealed (AES-256-GCM) 64 KiB
// frames, and appended to packs that are Reed-Solomon erasure-coded into
// shard objects spread over pool directories (chunkstore/shard).
//
// Visibility and crash safety: a chunk becomes visible (in the index) only
// after every shard of its pack is durable. Before a pack is written a
// pending mark is synced to the index; Open finishes (commits) a pending
// pack whose shards are all present and deletes one that is not, so a crash
// at any moment leaves either the whole pack visible or nothing of it.
//
// Concurrency: a Store is safe for concurrent use. One process opens a
// repository at a time (an exclusive lock file, and Badger's own directory
// lock); within the process GC coordinates with writers through the
// touched-set described in maint_gc.go.
//
// See README.md in this directory for formats and defaults.
package chunkstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/local"
	"github.com/vmvault/vmvault/chunkstore/shard"
)

// Sentinel errors; every error of this package is wrapped with a
// "chunkstore: " prefix and one of these where it applies.
var (
	ErrNotFound         = errors.New("chunkstore: not found")
	ErrCorrupt          = errors.New("chunkstore: corrupt")
	ErrWrongPassword    = errors.New("chunkstore: wrong password")
	ErrPasswordRequired = errors.New("chunkstore: repository is encrypted: password required")
	ErrLocked           = errors.New("chunkstore: repository is in use by another process")
	ErrClosed           = errors.New("chunkstore: store closed")
	// ErrUnrecoverable: more shards of a pack are lost than parity covers.
	ErrUnrecoverable = errors.New("chunkstore: unrecoverable")
)

// ID is a chunk ID: keyed BLAKE3-256 of the chunk's plaintext.
type ID [32]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID parses a 64-digit hex chunk ID.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("chunkstore: bad chunk ID %q", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunkstore: bad chunk ID %q: %w", s, err)
	}
	return id, nil
}

// RepairEvent reports a pack whose shards were found bad while reading and
// the outcome of rewriting them.
type RepairEvent struct {
	Pack      PackID
	Bad       []int // shard indexes found missing or damaged by the read
	Rewritten []int // shard indexes shard.Repair rewrote
	Err       error // nil when the repair succeeded
}

// OpenOptions tune an open Store. Zero values take defaults.
type OpenOptions struct {
	Password []byte
	// Backends replaces the pool directories of the config (same count,
	// same order), e.g. with fault-injecting backends in tests. The Store
	// does not close them.
	Backends []backend.Backend
	// Workers hash, compress and encrypt chunks (default GOMAXPROCS).
	Workers int
	// CacheBytes bounds the LRU of decoded frames (default 64 MiB).
	CacheBytes int64
	// PackReaders bounds the cache of open shard readers (default 256).
	PackReaders int
	// MaxPacksInFlight bounds sealed packs being written (default 2). With
	// the open pack, ingest memory is about (1+MaxPacksInFlight) *
	// 1.25 * PackSize plus the chunks in the workers' queues.
	MaxPacksInFlight int
	// OnRepair is called (from a background goroutine) after a read found
	// bad shards and the pack was repaired (or the repair failed).
	OnRepair func(RepairEvent)
	// Logf receives one line per notable event (repair, recovery, index
	// rebuild). Default log.Printf.
	Logf func(format string, args ...any)
	// NoAutoRebuild makes Open fail instead of rebuilding a missing or
	// unreadable index.
	NoAutoRebuild bool
}

// Store is an open repository.
type Store struct {
	dir    string
	cfg    *Config
	keys   *keys
	codec  *codec
	pools  []backend.Backend
	owned  bool
	idx    *index
	lock   *os.File
	opts   OpenOptions
	params shard.Params

	closeOnce sync.Once
	closed    chan struct{}

	// ingest (ingest.go)
	jobs     chan *chunkJob
	workerWG sync.WaitGroup
	packMu   sync.Mutex
	open     *packBuilder
	pending  map[ID]*pendingChunk // chunks not yet committed to the index
	inflight map[PackID]chan struct{}
	writeSem chan struct{}
	writeErr error // sticky: the first failed pack write
	packWG   sync.WaitGroup
	blocks   sync.Pool // *inBlock, see Ingest
	cdc      *cdc

	// read (read.go)
	rmu      sync.Mutex
	frames   *lru[frameKey, []byte]
	tables   *lru[ID, *frameTable]
	fflight  map[frameKey]*frameCall
	readers  *lru[PackID, *readerEntry]
	repairMu sync.Mutex
	repairs  map[PackID]bool
	repairWG sync.WaitGroup
	// repairFailed holds when a pack's last background repair failed, so
	// that every read of a damaged pack does not start another full one.
	repairFailed map[PackID]time.Time

	// gc (maint_gc.go)
	gcMu    sync.RWMutex
	touched map[ID]struct{} // non-nil while a GC runs
	tmu     sync.Mutex
}

// Open opens the repository in dir.
func Open(dir string, opts OpenOptions) (*Store, error) {
	cfg, err := readConfig(dir)
	if err != nil {
		return nil, err
	}
	ks, err := cfg.deriveKeys(opts.Password)
	if err != nil {
		return nil, err
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = 64 << 20
	}
	if opts.PackReaders <= 0 {
		opts.PackReaders = 256
	}
	if opts.MaxPacksInFlight <= 0 {
		opts.MaxPacksInFlight = 2
	}
	if opts.Logf == nil {
		opts.Logf = log.Printf
	}
	s := &Store{
		dir: dir, cfg: cfg, keys: ks, opts: opts,
		params:   shard.Params{K: cfg.DataShards, M: cfg.ParityShards, BlockSize: cfg.ShardBlock},
		closed:   make(chan struct{}),
		pending:  make(map[ID]*pendingChunk),
		inflight: make(map[PackID]chan struct{}),
		writeSem: make(chan struct{}, opts.MaxPacksInFlight),
		frames:   newLRU[frameKey, []byte](opts.CacheBytes),
		tables:   newLRU[ID, *frameTable](16384),
		fflight:  make(map[frameKey]*frameCall),
		readers:  newLRU[PackID, *readerEntry](int64(opts.PackReaders)),
		repairs:  make(map[PackID]bool),

		repairFailed: make(map[PackID]time.Time),
	}
	ok := false
	defer func() {
		if !ok {
			s.release()
		}
	}()
	if s.lock, err = lockRepo(filepath.Join(dir, "lock")); err != nil {
		return nil, err
	}
	if opts.Backends != nil {
		if len(opts.Backends) != len(cfg.Pools) {
			return nil, fmt.Errorf("chunkstore: %d backends for %d pools", len(opts.Backends), len(cfg.Pools))
		}
		s.pools = opts.Backends
	} else {
		s.owned = true
		for _, p := range cfg.Pools {
			be, err := local.Open(poolPath(dir, p), nil)
			if err != nil {
				return nil, fmt.Errorf("chunkstore: open pool: %w", err)
			}
			s.pools = append(s.pools, be)
		}
	}
	if s.codec, err = newCodec(cfg.FrameSize, cfg.Compression, cfg.ZstdLevel, ks.aead, opts.Workers); err != nil {
		return nil, err
	}
	if err := s.openIndex(); err != nil {
		return nil, err
	}
	ctx := context.Background()
	if !s.idx.valid(cfg.ID) {
		if opts.NoAutoRebuild {
			return nil, fmt.Errorf("chunkstore: index missing or incomplete: %w", ErrNotFound)
		}
		s.opts.Logf("chunkstore: index missing or incomplete, rebuilding from packs")
		if _, err := s.rebuild(ctx); err != nil {
			return nil, err
		}
	} else if err := s.recoverPending(ctx); err != nil {
		return nil, err
	}
	s.cdc = newCDC(cfg.polynomial(), cfg.Chunker.Min, cfg.Chunker.Max, cfg.Chunker.Avg)
	s.startWorkers()
	ok = true
	return s, nil
}

// openIndex opens <dir>/index; an index Badger cannot open is moved aside
// (it is only a cache) and a fresh one is created, to be rebuilt.
func (s *Store) openIndex() error {
	p := filepath.Join(s.dir, "index")
	x, err := openIndex(p)
	if err == nil {
		s.idx = x
		return nil
	}
	if s.opts.NoAutoRebuild {
		return err
	}
	aside := fmt.Sprintf("%s.broken-%d", p, time.Now().UnixNano())
	s.opts.Logf("chunkstore: index unreadable (%v); moving it to %s and rebuilding", err, aside)
	if rerr := os.Rename(p, aside); rerr != nil {
		return fmt.Errorf("chunkstore: move broken index aside: %w (open failed: %w)", rerr, err)
	}
	x, err = openIndex(p)
	if err != nil {
		return err
	}
	s.idx = x
	return nil
}

// Config returns a copy of the repository configuration.
func (s *Store) Config() Config {
	c := *s.cfg
	c.Pools = append([]string(nil), s.cfg.Pools...)
	return c
}

// Encrypted reports whether chunks are sealed.
func (s *Store) Encrypted() bool { return s.keys.aead != nil }

// Close seals and writes the open pack, waits for pack writes and
// background repairs, and releases the repository. Calls that start after
// Close return ErrClosed; calls still running when Close is called must
// finish first (Close does not wait for readers).
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		err = s.Flush(context.Background())
		close(s.closed)
		s.repairWG.Wait()
		s.stopWorkers()
		s.release()
	})
	return err
}

func (s *Store) release() {
	if s.idx != nil {
		if err := s.idx.close(); err != nil {
			s.opts.Logf("%v", err)
		}
		s.idx = nil
	}
	if s.codec != nil {
		s.codec.close()
	}
	if s.owned {
		for _, be := range s.pools {
			be.Close()
		}
	}
	if s.lock != nil {
		unlockRepo(s.lock)
		s.lock = nil
	}
}

func (s *Store) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

// targets returns where the shards of pack id live: shard i in pool
// i mod len(pools).
func (s *Store) targets(id PackID) []shard.Target {
	n := s.params.K + s.params.M
	t := make([]shard.Target, n)
	for i := range t {
		t[i] = shard.Target{BE: s.pools[i%len(s.pools)], Name: shardName(id, i)}
	}
	return t
}

// readerEntry is a cached shard.Reader, opened once (ready closes).
type readerEntry struct {
	ready chan struct{}
	r     *shard.Reader
	err   error
}

// packReader returns the (cached) shard reader of a pack.
func (s *Store) packReader(ctx context.Context, id PackID) (*shard.Reader, error) {
	s.rmu.Lock()
	e, ok := s.readers.get(id)
	if !ok {
		e = &readerEntry{ready: make(chan struct{})}
		s.readers.add(id, e, 1)
	}
	s.rmu.Unlock()
	if ok {
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return e.r, e.err
	}
	e.r, e.err = shard.NewReader(ctx, s.targets(id))
	if e.err == nil && e.r.Header().PackID != id {
		e.r, e.err = nil, fmt.Errorf("chunkstore: pack %s: %w: shard headers name pack %x", id, ErrCorrupt, e.r.Header().PackID)
	}
	if e.err != nil {
		e.err = s.wrapShardErr(id, e.err)
		s.rmu.Lock()
		if cur, ok := s.readers.get(id); ok && cur == e {
			s.readers.remove(id) // do not cache failures
		}
		s.rmu.Unlock()
	}
	close(e.ready)
	return e.r, e.err
}

func (s *Store) dropReader(id PackID) {
	s.rmu.Lock()
	s.readers.remove(id)
	s.rmu.Unlock()
}

func (s *Store) wrapShardErr(id PackID, err error) error {
	switch {
	case errors.Is(err, shard.ErrUnrecoverable):
		return fmt.Errorf("chunkstore: pack %s: %w: %w", id, ErrUnrecoverable, err)
	case errors.Is(err, shard.ErrCorrupt):
		return fmt.Errorf("chunkstore: pack %s: %w: %w", id, ErrCorrupt, err)
	default:
		return fmt.Errorf("chunkstore: pack %s: %w", id, err)
	}
}

// readPack reads pack bytes [off, off+len(p)) and schedules a repair when
// the shard layer had to reconstruct.
func (s *Store) readPack(ctx context.Context, id PackID, p []byte, off int64) error {
	r, err := s.packReader(ctx, id)
	if err != nil {
		return err
	}
	n, bad, err := r.ReadAt(ctx, p, off)
	if len(bad) > 0 {
		s.scheduleRepair(id, bad)
	}
	if err == nil && n != len(p) {
		err = fmt.Errorf("short read %d of %d", n, len(p))
	}
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) || errors.Is(err, shard.ErrUnrecoverable) {
			// A pack deleted by GC or lost: let the next open look again.
			s.dropReader(id)
		}
		return s.wrapShardErr(id, err)
	}
	return nil
}

// viewPack is readPack without the copy: the bytes in a buffer of the
// shard reader's pool, valid until release (never nil) is called.
func (s *Store) viewPack(ctx context.Context, id PackID, off int64, n int) ([]byte, func(), error) {
	r, err := s.packReader(ctx, id)
	if err != nil {
		return nil, func() {}, err
	}
	b, release, bad, err := r.View(ctx, off, n)
	if len(bad) > 0 {
		s.scheduleRepair(id, bad)
	}
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) || errors.Is(err, shard.ErrUnrecoverable) {
			s.dropReader(id)
		}
		return nil, release, s.wrapShardErr(id, err)
	}
	return b, release, nil
}

// readTrailer reads and parses a pack's trailer through its shard reader.
func (s *Store) readTrailer(ctx context.Context, id PackID) ([]packEntry, error) {
	r, err := s.packReader(ctx, id)
	if err != nil {
		return nil, err
	}
	pl := r.Header().PackLen
	if pl < packHeaderLen+packFooterLen+2 {
		return nil, fmt.Errorf("chunkstore: pack %s: %w: pack of %d bytes", id, ErrCorrupt, pl)
	}
	hdr := make([]byte, packHeaderLen)
	if err := s.readPack(ctx, id, hdr, 0); err != nil {
		return nil, err
	}
	wantFlags := byte(0)
	if s.keys.aead != nil {
		wantFlags = 1
	}
	if string(hdr[:4]) != packMagic || hdr[4] != packVersion || hdr[5] != wantFlags {
		return nil, fmt.Errorf("chunkstore: pack %s: %w: bad pack header % x (or a pack of another repository)", id, ErrCorrupt, hdr)
	}
	foot := make([]byte, packFooterLen)
	if err := s.readPack(ctx, id, foot, pl-packFooterLen); err != nil {
		return nil, err
	}
	tl, c, err := parseFooter(foot, pl)
	if err != nil {
		return nil, fmt.Errorf("chunkstore: pack %s: %w", id, err)
	}
	region := make([]byte, tl)
	toff := pl - packFooterLen - int64(tl)
	if err := s.readPack(ctx, id, region, toff); err != nil {
		return nil, err
	}
	return parseTrailer(region, c, id, toff, s.keys.aead)
}

// scheduleRepair rewrites a pack's bad shards in the background (once per
// pack at a time), then reports it. Background because the reader already
// has its data (reconstructed) and should not wait for K+M shard reads and
// a rewrite; Close waits for running repairs.
func (s *Store) scheduleRepair(id PackID, bad []int) {
	s.repairMu.Lock()
	if s.repairs[id] || s.isClosed() || time.Since(s.repairFailed[id]) < repairRetry {
		s.repairMu.Unlock()
		return
	}
	s.repairs[id] = true
	s.repairWG.Add(1)
	s.repairMu.Unlock()
	bad = append([]int(nil), bad...)
	go func() {
		defer s.repairWG.Done()
		ev := s.repairPack(context.Background(), id, bad)
		s.repairMu.Lock()
		delete(s.repairs, id)
		if ev.Err != nil {
			s.repairFailed[id] = time.Now()
		} else {
			delete(s.repairFailed, id)
		}
		s.repairMu.Unlock()
		// A reader with a stale view may report shards another repair
		// already rewrote: nothing to tell then.
		if s.opts.OnRepair != nil && (ev.Err != nil || len(ev.Rewritten) > 0) {
			s.opts.OnRepair(ev)
		}
	}()
}

// repairRetry is how long a failed background repair of a pack is not
// retried by reads.
const repairRetry = 5 * time.Minute

// repairPack runs shard.Repair for one pack and logs the outcome.
func (s *Store) repairPack(ctx context.Context, id PackID, bad []int) RepairEvent {
	ev := RepairEvent{Pack: id, Bad: bad}
	s.gcMu.RLock() // GC must not delete the pack under the repair
	rew, err := shard.Repair(ctx, s.targets(id))
	s.gcMu.RUnlock()
	s.dropReader(id) // the cached reader has shards marked dead
	ev.Rewritten = rew
	switch {
	case err != nil:
		ev.Err = s.wrapShardErr(id, err)
		s.opts.Logf("chunkstore: repair of pack %s (bad shards %v) failed: %v", id, bad, err)
	case len(rew) > 0:
		s.opts.Logf("chunkstore: repaired pack %s: rewrote shards %v", id, rew)
	}
	return ev
}

// recoverPending finishes what a crash interrupted: a pack marked pending
// whose shards are all present and whose trailer parses is committed (the
// crash hit between shard.Write and the index commit); any other pending
// pack is deleted, it was never visible.
func (s *Store) recoverPending(ctx context.Context) error {
	var ids []PackID
	if err := s.idx.scan(idxPending, func(k [32]byte, _ []byte) error {
		ids = append(ids, PackID(k))
		return nil
	}); err != nil {
		return err
	}
	var doomed []PackID
	if err := s.idx.scan(idxDoomed, func(k [32]byte, _ []byte) error {
		doomed = append(doomed, PackID(k))
		return nil
	}); err != nil {
		return err
	}
	for _, id := range doomed {
		if err := s.deletePackShards(ctx, id); err != nil {
			return err
		}
		if err := s.idx.clearDoomed(id); err != nil {
			return fmt.Errorf("chunkstore: index: %w", err)
		}
		s.opts.Logf("chunkstore: finished deleting pack %s (garbage collection interrupted)", id)
	}
	for _, id := range ids {
		rep, verr := shard.Verify(ctx, s.targets(id), false)
		var es []packEntry
		err := verr
		if err == nil && !rep.OK() {
			err = fmt.Errorf("shards %v incomplete", rep.Bad())
		}
		if err == nil {
			es, err = s.readTrailer(ctx, id)
		}
		if err == nil {
			if err := s.idx.commitPack(id, es); err != nil {
				return err
			}
			s.opts.Logf("chunkstore: recovered pack %s (%d chunks) written before a crash", id, len(es))
			continue
		}
		s.opts.Logf("chunkstore: discarding pack %s interrupted by a crash (%v)", id, err)
		if err := s.deletePackShards(ctx, id); err != nil {
			return err
		}
		if err := s.idx.clearPending(id); err != nil {
			return fmt.Errorf("chunkstore: index: %w", err)
		}
	}
	return nil
}

func (s *Store) deletePackShards(ctx context.Context, id PackID) error {
	s.dropReader(id)
	for _, t := range s.targets(id) {
		if err := t.BE.Delete(ctx, t.Name); err != nil {
			return fmt.Errorf("chunkstore: delete %s: %w", t.Name, err)
		}
	}
	return nil
}
