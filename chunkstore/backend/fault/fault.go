// Package fault wraps a backend.Backend and injects faults, so the layers
// above (shards, packs, repair) can be tested against failing Puts, short and
// failing reads, flipped bits and lost objects without a real broken disk;
// and it counts calls and bytes per object, so a test can assert that reading
// one chunk touched only the shard ranges that hold it.
//
// Faults are programmed with small funcs and can be changed at any time,
// from any goroutine, while the backend is in use:
//
//	fb := fault.New(mem.New())
//	fb.Fail(fault.OpPut, fault.Nth(3, errDisk))            // third Put fails
//	fb.Fail(fault.OpReadAt, fault.Name("pool1/", errDisk)) // reads under pool1/ fail
//	fb.FlipBit("pool0/ab/x.shard", 4096, 0)                // one bad bit on read
//	fb.Lose("pool2/ab/x.shard")                            // ErrNotFound from now on
//	...
//	if got := fb.Counts("pool0/ab/x.shard").BytesRead; got > 65536 { ... }
//
// Fault funcs run without the wrapper's lock, so they may block (a func that
// waits on a channel or sleeps is a latency or hang injector for testing
// cancellation) and may call back into the wrapper.
//
// A fault that fails a call does so before the inner backend sees it, so a
// failed Put stores nothing (as the contract promises for real failures);
// FailAfter instead performs the call and then reports an error, the
// "did it land?" case of a lost acknowledgement. Data faults (FlipBit, Lose)
// model damage to the stored object, so a later successful Put or Delete of
// that name clears them: that is how a repair write-back heals a shard.
package fault

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/vmvault/vmvault/chunkstore/backend"
)

// Op names a backend verb.
type Op string

// The verbs faults can be attached to.
const (
	OpPut    Op = "put"
	OpReadAt Op = "readat"
	OpStat   Op = "stat"
	OpList   Op = "list"
	OpDelete Op = "delete"
)

// Call describes one call to the wrapper, as seen by a fault func.
type Call struct {
	Op   Op
	Name string // object name; the prefix for OpList
	Off  int64  // ReadAt offset
	Len  int    // ReadAt len(p); Put size
	// N is the 1-based sequence number of this call among calls of the
	// same Op on this wrapper (all names), counted before faults apply.
	N int
}

// ErrInjected is a ready-made error for tests to pass to Nth, Match and
// Name and to check with errors.Is.
var ErrInjected = errors.New("fault: injected failure")

// FailFunc decides whether a call fails: a non-nil error is returned
// (wrapped with the verb and name) instead of performing the call.
type FailFunc func(Call) error

// Nth fails the n-th call (Call.N == n) with err.
func Nth(n int, err error) FailFunc {
	return func(c Call) error {
		if c.N == n {
			return err
		}
		return nil
	}
}

// Match fails every call whose name satisfies pred with err.
func Match(pred func(name string) bool, err error) FailFunc {
	return func(c Call) error {
		if pred(c.Name) {
			return err
		}
		return nil
	}
}

// Name fails every call whose name starts with prefix with err (prefix may
// be a whole name).
func Name(prefix string, err error) FailFunc {
	return Match(func(n string) bool { return strings.HasPrefix(n, prefix) }, err)
}

// Counts are the calls and bytes seen for one object (or in total). Calls
// are counted whether or not a fault failed them; bytes count only data that
// actually moved.
type Counts struct {
	Puts, ReadAts, Stats, Deletes int
	BytesPut, BytesRead           int64
}

func (c *Counts) add(o Counts) {
	c.Puts += o.Puts
	c.ReadAts += o.ReadAts
	c.Stats += o.Stats
	c.Deletes += o.Deletes
	c.BytesPut += o.BytesPut
	c.BytesRead += o.BytesRead
}

// Range is one requested ReadAt range.
type Range struct {
	Off int64
	Len int
}

type bitFlip struct {
	off int64
	bit uint8
}

type rule struct {
	id    int
	op    Op
	after bool
	fn    FailFunc
}

// Backend is the fault-injecting wrapper. The zero value is not usable;
// call New.
type Backend struct {
	inner backend.Backend

	mu       sync.Mutex
	nextID   int
	rules    []rule
	short    func(Call) int
	corrupt  func(name string, off int64, p []byte)
	flips    map[string][]bitFlip
	lost     map[string]bool
	losePred func(name string) bool
	seq      map[Op]int
	counts   map[string]*Counts
	ranges   map[string][]Range
}

var _ backend.Backend = (*Backend)(nil)

// New wraps inner. With no faults programmed it behaves exactly like inner
// (and passes backendtest.Run).
func New(inner backend.Backend) *Backend {
	b := &Backend{inner: inner}
	b.Reset()
	b.ResetCounts()
	return b
}

// Inner returns the wrapped backend, e.g. to inspect or damage stored data
// behind the wrapper's back.
func (b *Backend) Inner() backend.Backend { return b.inner }

// Fail makes calls of op fail with the error fn returns, before they reach
// the inner backend. Several funcs may be registered; the first non-nil
// error wins. The returned func removes this one.
func (b *Backend) Fail(op Op, fn FailFunc) (remove func()) { return b.addRule(op, false, fn) }

// FailAfter is Fail for calls that are performed first: the inner Put or
// Delete happens, then the error is returned. It models a lost reply and is
// meant for OpPut and OpDelete (for reads it just discards the result).
func (b *Backend) FailAfter(op Op, fn FailFunc) (remove func()) { return b.addRule(op, true, fn) }

func (b *Backend) addRule(op Op, after bool, fn FailFunc) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nextID++
	id := b.nextID
	b.rules = append(b.rules, rule{id: id, op: op, after: after, fn: fn})
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.rules = slices.DeleteFunc(b.rules, func(r rule) bool { return r.id == id })
	}
}

// ShortRead makes ReadAt deliver fewer bytes than asked: fn returns how many
// bytes of the call to keep (0 <= keep < Call.Len) or a negative number for
// no fault. A short ReadAt returns io.ErrUnexpectedEOF, like a truncated
// transfer. nil removes the fault.
func (b *Backend) ShortRead(fn func(Call) int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.short = fn
}

// FlipBit makes every ReadAt of name that covers byte off return it with bit
// (0-7) inverted, as if the stored byte had rotted. It stays until Reset or a
// successful Put or Delete of name.
func (b *Backend) FlipBit(name string, off int64, bit uint8) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flips[name] = append(b.flips[name], bitFlip{off: off, bit: bit & 7})
}

// Corrupt calls fn on the bytes of every successful ReadAt (p holds the n
// bytes read from offset off) so it can damage them in place. nil removes it.
func (b *Backend) Corrupt(fn func(name string, off int64, p []byte)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.corrupt = fn
}

// Lose makes name look missing: ReadAt and Stat report backend.ErrNotFound
// and List skips it, while the data stays in the inner backend. A successful
// Put of name brings it back (with the new content), as does Reset.
func (b *Backend) Lose(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lost[name] = true
}

// LoseIf is Lose for every name pred accepts (now or later); objects Put
// after the call are lost too. nil removes the predicate.
func (b *Backend) LoseIf(pred func(name string) bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.losePred = pred
}

// Reset removes every fault. Counters are kept (see ResetCounts).
func (b *Backend) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rules = nil
	b.short = nil
	b.corrupt = nil
	b.flips = make(map[string][]bitFlip)
	b.lost = make(map[string]bool)
	b.losePred = nil
}

// ResetCounts zeroes all counters, recorded ranges and Call.N sequences.
func (b *Backend) ResetCounts() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq = make(map[Op]int)
	b.counts = make(map[string]*Counts)
	b.ranges = make(map[string][]Range)
}

// Counts returns the counters of one object.
func (b *Backend) Counts(name string) Counts {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.counts[name]; c != nil {
		return *c
	}
	return Counts{}
}

// Total returns the counters summed over all objects.
func (b *Backend) Total() Counts {
	b.mu.Lock()
	defer b.mu.Unlock()
	var t Counts
	for _, c := range b.counts {
		t.add(*c)
	}
	return t
}

// Calls returns the number of calls of op so far (List included).
func (b *Backend) Calls(op Op) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seq[op]
}

// ReadRanges returns the ranges requested from name by ReadAt, in call order.
func (b *Backend) ReadRanges(name string) []Range {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.ranges[name])
}

// begin numbers and counts the call and returns the fault funcs that apply;
// they run without the lock so they may call back into the wrapper.
func (b *Backend) begin(c *Call) (before, after []FailFunc) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq[c.Op]++
	c.N = b.seq[c.Op]
	if c.Op != OpList {
		cnt := b.counts[c.Name]
		if cnt == nil {
			cnt = &Counts{}
			b.counts[c.Name] = cnt
		}
		switch c.Op {
		case OpPut:
			cnt.Puts++
		case OpReadAt:
			cnt.ReadAts++
			b.ranges[c.Name] = append(b.ranges[c.Name], Range{Off: c.Off, Len: c.Len})
		case OpStat:
			cnt.Stats++
		case OpDelete:
			cnt.Deletes++
		}
	}
	for _, r := range b.rules {
		if r.op != c.Op {
			continue
		}
		if r.after {
			after = append(after, r.fn)
		} else {
			before = append(before, r.fn)
		}
	}
	return before, after
}

func firstErr(fns []FailFunc, c Call) error {
	for _, fn := range fns {
		if err := fn(c); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) isLost(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lost[name] || (b.losePred != nil && b.losePred(name))
}

func (b *Backend) addBytes(name string, put, read int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c := b.counts[name]; c != nil {
		c.BytesPut += put
		c.BytesRead += read
	}
}

// healed clears the data faults of name after it was rewritten or removed.
func (b *Backend) healed(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.lost, name)
	delete(b.flips, name)
}

// Put implements backend.Backend.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	c := Call{Op: OpPut, Name: name, Len: int(size)}
	before, after := b.begin(&c)
	if err := firstErr(before, c); err != nil {
		return fmt.Errorf("fault: put %s: %w", name, err)
	}
	err := b.inner.Put(ctx, name, r, size)
	if err == nil {
		b.healed(name)
		b.addBytes(name, size, 0)
		if ferr := firstErr(after, c); ferr != nil {
			return fmt.Errorf("fault: put %s: %w", name, ferr)
		}
	}
	return err
}

// ReadAt implements backend.Backend. Faults apply in this order: lost,
// Fail funcs, the inner read, ShortRead, FlipBit, Corrupt.
func (b *Backend) ReadAt(ctx context.Context, name string, p []byte, off int64) (int, error) {
	c := Call{Op: OpReadAt, Name: name, Off: off, Len: len(p)}
	before, after := b.begin(&c)
	if b.isLost(name) && backend.ValidateName(name) == nil {
		return 0, fmt.Errorf("fault: read %s: lost: %w", name, backend.ErrNotFound)
	}
	if err := firstErr(before, c); err != nil {
		return 0, fmt.Errorf("fault: read %s: %w", name, err)
	}
	n, err := b.inner.ReadAt(ctx, name, p, off)

	b.mu.Lock()
	short, corrupt := b.short, b.corrupt
	flips := slices.Clone(b.flips[name])
	b.mu.Unlock()

	if short != nil && n > 0 {
		if keep := short(c); keep >= 0 && keep < n {
			n, err = keep, fmt.Errorf("fault: read %s: short read of %d bytes: %w", name, keep, io.ErrUnexpectedEOF)
		}
	}
	for _, f := range flips {
		if f.off >= off && f.off < off+int64(n) {
			p[f.off-off] ^= 1 << f.bit
		}
	}
	if corrupt != nil && n > 0 {
		corrupt(name, off, p[:n])
	}
	b.addBytes(name, 0, int64(n))
	if ferr := firstErr(after, c); ferr != nil {
		return 0, fmt.Errorf("fault: read %s: %w", name, ferr)
	}
	return n, err
}

// Stat implements backend.Backend.
func (b *Backend) Stat(ctx context.Context, name string) (backend.ObjectInfo, error) {
	c := Call{Op: OpStat, Name: name}
	before, after := b.begin(&c)
	if b.isLost(name) && backend.ValidateName(name) == nil {
		return backend.ObjectInfo{}, fmt.Errorf("fault: stat %s: lost: %w", name, backend.ErrNotFound)
	}
	if err := firstErr(before, c); err != nil {
		return backend.ObjectInfo{}, fmt.Errorf("fault: stat %s: %w", name, err)
	}
	fi, err := b.inner.Stat(ctx, name)
	if ferr := firstErr(after, c); err == nil && ferr != nil {
		return backend.ObjectInfo{}, fmt.Errorf("fault: stat %s: %w", name, ferr)
	}
	return fi, err
}

// List implements backend.Backend; lost objects are skipped. Fail funcs for
// OpList see the prefix as Call.Name.
func (b *Backend) List(ctx context.Context, prefix string, fn func(backend.ObjectInfo) error) error {
	c := Call{Op: OpList, Name: prefix}
	before, after := b.begin(&c)
	if err := firstErr(before, c); err != nil {
		return fmt.Errorf("fault: list %s: %w", prefix, err)
	}
	err := b.inner.List(ctx, prefix, func(fi backend.ObjectInfo) error {
		if b.isLost(fi.Name) {
			return nil
		}
		return fn(fi)
	})
	if ferr := firstErr(after, c); err == nil && ferr != nil {
		return fmt.Errorf("fault: list %s: %w", prefix, ferr)
	}
	return err
}

// Delete implements backend.Backend.
func (b *Backend) Delete(ctx context.Context, name string) error {
	c := Call{Op: OpDelete, Name: name}
	before, after := b.begin(&c)
	if err := firstErr(before, c); err != nil {
		return fmt.Errorf("fault: delete %s: %w", name, err)
	}
	err := b.inner.Delete(ctx, name)
	if err == nil {
		b.healed(name)
		if ferr := firstErr(after, c); ferr != nil {
			return fmt.Errorf("fault: delete %s: %w", name, ferr)
		}
	}
	return err
}

// Close closes the inner backend.
func (b *Backend) Close() error { return b.inner.Close() }
