package local

import (
	"container/list"
	"os"
	"sync"
)

// handleCache is a bounded LRU of open read-only file handles. Chunk reads
// hit the same few shard files over and over (a restore walks a pack chunk
// by chunk), and open+close per 64 KiB read costs more than the read itself.
//
// Handles are reference counted so that eviction or invalidation never
// closes a file under a ReadAt in flight: a dropped entry is marked dead and
// closed by whoever releases the last reference.
//
// Stale handles are the danger: after Put replaces or Delete removes an
// object, a cached handle would still read the old inode. Put and Delete call
// invalidate after the rename/unlink, which drops the entry; a reader that
// opened the old file before the rename but inserts after the invalidate is
// caught by the epoch check in get (every invalidate bumps epoch, and a
// handle opened under an older epoch is used once and not cached).
type handleCache struct {
	mu      sync.Mutex
	max     int
	epoch   uint64
	entries map[string]*list.Element // of *handle
	lru     list.List                // front = most recently used
	closed  bool
}

type handle struct {
	name string
	f    *os.File
	refs int
	dead bool // out of the cache; close when refs drops to 0
	// cached is false for handles that were never put into the cache; the
	// releaser closes them directly.
	cached bool
}

func newHandleCache(max int) *handleCache {
	return &handleCache{max: max, entries: make(map[string]*list.Element)}
}

// get returns an open handle for name, opening it with open on a miss. The
// caller must call release exactly once.
func (c *handleCache) get(name string, open func() (*os.File, error)) (*handle, error) {
	c.mu.Lock()
	if el, ok := c.entries[name]; ok {
		h := el.Value.(*handle)
		h.refs++
		c.lru.MoveToFront(el)
		c.mu.Unlock()
		return h, nil
	}
	epoch := c.epoch
	c.mu.Unlock()

	// Open without the lock: a slow open (cold metadata, network
	// filesystem) must not stall readers of other objects.
	f, err := open()
	if err != nil {
		return nil, err
	}
	h := &handle{name: name, f: f, refs: 1}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.max <= 0 || c.closed || c.epoch != epoch {
		return h, nil // use once, uncached
	}
	if el, ok := c.entries[name]; ok {
		// Another reader opened it concurrently and won; share theirs.
		f.Close()
		other := el.Value.(*handle)
		other.refs++
		c.lru.MoveToFront(el)
		return other, nil
	}
	h.cached = true
	c.entries[name] = c.lru.PushFront(h)
	for c.lru.Len() > c.max {
		c.dropLocked(c.lru.Back())
	}
	return h, nil
}

// release gives back a handle obtained from get.
func (c *handleCache) release(h *handle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h.refs--
	if h.refs == 0 && (!h.cached || h.dead) {
		h.f.Close()
	}
}

// invalidate drops any cached handle for name; call it after the object was
// replaced or removed (and, to free the file on Windows, also before).
func (c *handleCache) invalidate(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	if el, ok := c.entries[name]; ok {
		c.dropLocked(el)
	}
}

// close drops every cached handle; later gets work but cache nothing.
func (c *handleCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for c.lru.Len() > 0 {
		c.dropLocked(c.lru.Back())
	}
}

func (c *handleCache) dropLocked(el *list.Element) {
	h := c.lru.Remove(el).(*handle)
	delete(c.entries, h.name)
	h.dead = true
	if h.refs == 0 {
		h.f.Close()
	}
}

// len reports the number of cached handles (for tests).
func (c *handleCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
