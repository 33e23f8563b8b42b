// Package throttle limits the bandwidth of backup and restore streams.
//
// One Limiter is one budget: every Reader, Writer and WriterAt made from it
// draws from the same token bucket, so parallel restores that share a
// limiter share its rate instead of each getting the full rate. The rate
// follows a Schedule ("Mon-Fri 08:00-18:00=20MiB/s,*=0"), re-read whenever
// the clock enters a new minute (schedule rules are minute-granular), so a
// change of rule takes effect within a minute plus at most one chunk wait.
//
// Waits are chunked: a large write is split into pieces of at most the
// bucket's burst, so the burst can stay small (smooth traffic) however big
// the caller's buffers are, and each wait is about a second at most, which
// bounds how late a schedule change or a cancellation is noticed.
package throttle

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

const (
	// minBurst keeps typical 64-256 KiB I/Os in one piece at low rates.
	minBurst = 256 << 10
	// minChunk is the smallest piece a wait is split into, so that very
	// low rates do not turn into byte-sized writes.
	minChunk = 4 << 10
)

// burstFor sizes the bucket: a tenth of a second of traffic, at least
// minBurst.
func burstFor(r int64) int {
	b := r / 10
	if b < minBurst {
		b = minBurst
	}
	const maxInt = int64(^uint(0) >> 1)
	if b > maxInt {
		b = maxInt
	}
	return int(b)
}

// chunkFor is the largest piece waited for at once: the burst (rate.Limiter
// cannot grant more in one go), and no more than about one second of
// traffic so a wait never blocks for long.
func chunkFor(r int64, burst int) int {
	c := int64(burst)
	if r < c {
		c = r
	}
	if c < minChunk {
		c = minChunk
	}
	if c > int64(burst) {
		c = int64(burst)
	}
	return int(c)
}

// Limiter is a bandwidth budget shared by all streams made from it. A nil
// *Limiter is valid and unlimited: its wrappers return the stream itself.
// All methods are safe for concurrent use.
type Limiter struct {
	now func() time.Time

	mu         sync.Mutex
	sched      *Schedule
	rate       int64         // current rate, 0 = unlimited
	bucket     *rate.Limiter // nil when unlimited
	burst      int
	checkedAt  time.Time
	validUntil time.Time // re-read the schedule once the clock reaches this
}

// Option configures a Limiter.
type Option func(*Limiter)

// WithClock sets the clock used to evaluate the schedule (tests). Waiting
// itself always happens in real time.
func WithClock(now func() time.Time) Option {
	return func(l *Limiter) { l.now = now }
}

// New returns a limiter following s (nil = unlimited).
func New(s *Schedule, opts ...Option) *Limiter {
	l := &Limiter{sched: s, now: time.Now}
	for _, o := range opts {
		o(l)
	}
	return l
}

// SetSchedule replaces the schedule; it applies to the next wait.
func (l *Limiter) SetSchedule(s *Schedule) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sched = s
	l.validUntil = time.Time{}
}

// Schedule returns the schedule in use.
func (l *Limiter) Schedule() *Schedule {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sched
}

// Rate returns the rate in force now, in bytes per second (0 = unlimited).
func (l *Limiter) Rate() int64 {
	if l == nil {
		return 0
	}
	r, _, _ := l.current()
	return r
}

// current re-reads the schedule if the clock has entered a new minute (or
// gone backwards) and returns the rate with the bucket and burst that go
// with it. A rate change makes a new bucket instead of resizing the old
// one: a waiter holding a chunk sized for the old burst would otherwise be
// refused by the smaller one.
func (l *Limiter) current() (int64, *rate.Limiter, int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.validUntil.IsZero() && now.Before(l.validUntil) && !now.Before(l.checkedAt) {
		return l.rate, l.bucket, l.burst
	}
	r := l.sched.RateAt(now)
	l.checkedAt = now
	l.validUntil = now.Truncate(time.Minute).Add(time.Minute)
	if r != l.rate || (r > 0 && l.bucket == nil) {
		l.rate = r
		l.bucket, l.burst = nil, 0
		if r > 0 {
			l.burst = burstFor(r)
			l.bucket = rate.NewLimiter(rate.Limit(r), l.burst)
		}
	}
	return l.rate, l.bucket, l.burst
}

// WaitN blocks until n bytes may pass, or ctx is done. Any n is fine: it
// is waited for in chunks. It returns an error wrapping ctx.Err() when
// ctx ends first.
func (l *Limiter) WaitN(ctx context.Context, n int) error {
	for n > 0 {
		c, err := l.waitChunk(ctx, n)
		if err != nil {
			return err
		}
		n -= c
	}
	return nil
}

// waitChunk waits for up to max bytes and returns how many it got.
func (l *Limiter) waitChunk(ctx context.Context, max int) (int, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("throttle: %w", err)
	}
	r, bucket, burst := l.current()
	if r == 0 {
		return max, nil
	}
	c := chunkFor(r, burst)
	if c > max {
		c = max
	}
	if err := bucket.WaitN(ctx, c); err != nil {
		if ctx.Err() != nil {
			return 0, fmt.Errorf("throttle: %w", ctx.Err())
		}
		// Only "would exceed context deadline" is left: the wait was not
		// even started, so report it as the deadline it is.
		return 0, fmt.Errorf("throttle: wait for %d bytes at %s: %w", c, FormatRate(r), context.DeadlineExceeded)
	}
	return c, nil
}

// Reader returns r throttled by l. Each Read returns at most one chunk and
// is charged for the bytes it actually read. ctx cancels a waiting Read.
func (l *Limiter) Reader(ctx context.Context, r io.Reader) io.Reader {
	if l == nil {
		return r
	}
	return &reader{ctx: ctx, l: l, r: r}
}

// Writer returns w throttled by l; a large Write reaches w as several
// chunk-sized writes. ctx cancels a waiting Write, which then returns the
// bytes written so far and the error.
func (l *Limiter) Writer(ctx context.Context, w io.Writer) io.Writer {
	if l == nil {
		return w
	}
	return &writer{ctx: ctx, l: l, w: w}
}

// WriterAt returns w throttled by l, for restores that write disk images
// at offsets from several goroutines; same chunking as Writer.
func (l *Limiter) WriterAt(ctx context.Context, w io.WriterAt) io.WriterAt {
	if l == nil {
		return w
	}
	return &writerAt{ctx: ctx, l: l, w: w}
}

type reader struct {
	ctx context.Context
	l   *Limiter
	r   io.Reader
}

func (t *reader) Read(p []byte) (int, error) {
	r, _, burst := t.l.current()
	if r > 0 {
		if c := chunkFor(r, burst); len(p) > c {
			p = p[:c]
		}
	}
	n, err := t.r.Read(p)
	if n > 0 {
		// Charged after the read, for the bytes actually read; the data
		// is held back until the budget allows it.
		if werr := t.l.WaitN(t.ctx, n); werr != nil {
			// The bytes were consumed from r: hand them over with the
			// error, as io.Reader asks, rather than lose them.
			return n, werr
		}
	}
	return n, err
}

type writer struct {
	ctx context.Context
	l   *Limiter
	w   io.Writer
}

func (t *writer) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		c, err := t.l.waitChunk(t.ctx, len(p)-done)
		if err != nil {
			return done, err
		}
		n, err := t.w.Write(p[done : done+c])
		done += n
		if err != nil {
			return done, err
		}
		if n < c {
			return done, io.ErrShortWrite
		}
	}
	return done, nil
}

type writerAt struct {
	ctx context.Context
	l   *Limiter
	w   io.WriterAt
}

func (t *writerAt) WriteAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		c, err := t.l.waitChunk(t.ctx, len(p)-done)
		if err != nil {
			return done, err
		}
		n, err := t.w.WriteAt(p[done:done+c], off+int64(done))
		done += n
		if err != nil {
			return done, err
		}
		if n < c {
			return done, io.ErrShortWrite
		}
	}
	return done, nil
}
