package fault_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vmvault/vmvault/chunkstore/backend"
	"github.com/vmvault/vmvault/chunkstore/backend/backendtest"
	"github.com/vmvault/vmvault/chunkstore/backend/fault"
	"github.com/vmvault/vmvault/chunkstore/backend/local"
	"github.com/vmvault/vmvault/chunkstore/backend/mem"
)

func TestConformance(t *testing.T) {
	t.Run("mem", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend { return fault.New(mem.New()) })
	})
	t.Run("local", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) backend.Backend {
			l, err := local.Open(t.TempDir(), nil)
			if err != nil {
				t.Fatal(err)
			}
			return fault.New(l)
		})
	})
}

var ctx = context.Background()

func put(t *testing.T, b backend.Backend, name string, data []byte) error {
	t.Helper()
	return b.Put(ctx, name, bytes.NewReader(data), int64(len(data)))
}

func TestFailNthPut(t *testing.T) {
	fb := fault.New(mem.New())
	fb.Fail(fault.OpPut, fault.Nth(3, fault.ErrInjected))
	for i := 1; i <= 5; i++ {
		err := put(t, fb, fmt.Sprintf("o/%d", i), []byte("x"))
		if (i == 3) != errors.Is(err, fault.ErrInjected) {
			t.Errorf("Put #%d = %v", i, err)
		}
	}
	// The failed Put stored nothing.
	if _, err := fb.Inner().Stat(ctx, "o/3"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("failed Put reached the inner backend: %v", err)
	}
	if got := backendtest.Names(t, fb, ""); len(got) != 4 {
		t.Errorf("List = %q", got)
	}
}

func TestFailByNameAndRemove(t *testing.T) {
	fb := fault.New(mem.New())
	remove := fb.Fail(fault.OpPut, fault.Name("pool1/", fault.ErrInjected))
	if err := put(t, fb, "pool1/a", []byte("x")); !errors.Is(err, fault.ErrInjected) {
		t.Errorf("Put pool1/a = %v", err)
	} else if !strings.HasPrefix(err.Error(), "fault: put pool1/a: ") {
		t.Errorf("error %q lacks the prefix", err)
	}
	if err := put(t, fb, "pool0/a", []byte("x")); err != nil {
		t.Errorf("Put pool0/a = %v", err)
	}
	remove()
	if err := put(t, fb, "pool1/a", []byte("x")); err != nil {
		t.Errorf("Put after remove = %v", err)
	}
	fb.Fail(fault.OpReadAt, fault.Match(func(n string) bool { return n == "pool0/a" }, io.ErrNoProgress))
	if _, err := fb.ReadAt(ctx, "pool0/a", make([]byte, 1), 0); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("ReadAt = %v", err)
	}
	if _, err := fb.ReadAt(ctx, "pool1/a", make([]byte, 1), 0); err != nil {
		t.Errorf("ReadAt of an unaffected name = %v", err)
	}
	fb.Reset()
	if _, err := fb.ReadAt(ctx, "pool0/a", make([]byte, 1), 0); err != nil {
		t.Errorf("ReadAt after Reset = %v", err)
	}
}

func TestFailAfter(t *testing.T) {
	fb := fault.New(mem.New())
	fb.FailAfter(fault.OpPut, fault.Nth(1, fault.ErrInjected))
	if err := put(t, fb, "a", []byte("x")); !errors.Is(err, fault.ErrInjected) {
		t.Fatalf("Put = %v", err)
	}
	// The Put landed although it reported failure.
	if got := backendtest.Get(t, fb, "a"); string(got) != "x" {
		t.Errorf("object = %q", got)
	}
}

func TestShortRead(t *testing.T) {
	fb := fault.New(mem.New())
	data := backendtest.Data(1, 1000)
	put(t, fb, "a", data)
	fb.ShortRead(func(c fault.Call) int {
		if c.Off == 100 {
			return c.Len / 2
		}
		return -1
	})
	p := make([]byte, 200)
	n, err := fb.ReadAt(ctx, "a", p, 100)
	if n != 100 || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short ReadAt = %d, %v; want 100, ErrUnexpectedEOF", n, err)
	}
	if !bytes.Equal(p[:n], data[100:200]) {
		t.Error("short read returned wrong bytes")
	}
	if n, err := fb.ReadAt(ctx, "a", p, 0); n != 200 || err != nil {
		t.Errorf("unaffected ReadAt = %d, %v", n, err)
	}
	if got := fb.Counts("a").BytesRead; got != 300 {
		t.Errorf("BytesRead = %d, want 300 (only delivered bytes)", got)
	}
}

func TestFlipBitHealedByPut(t *testing.T) {
	fb := fault.New(mem.New())
	data := backendtest.Data(2, 1000)
	put(t, fb, "a", data)
	fb.FlipBit("a", 500, 3)

	p := make([]byte, 100)
	fb.ReadAt(ctx, "a", p, 0) // does not cover 500
	if !bytes.Equal(p, data[:100]) {
		t.Error("flip outside the read range changed data")
	}
	got := backendtest.Get(t, fb, "a")
	if got[500] != data[500]^8 {
		t.Errorf("byte 500 = %#x, want %#x", got[500], data[500]^8)
	}
	got[500] ^= 8
	if !bytes.Equal(got, data) {
		t.Error("more than one bit changed")
	}
	// Reading at an offset maps the flip into p correctly.
	fb.ReadAt(ctx, "a", p, 450)
	if p[50] != data[500]^8 {
		t.Error("flip not applied at the right position of an offset read")
	}
	// The stored object is intact; a repair Put clears the damage.
	if inner := backendtest.Get(t, fb.Inner(), "a"); !bytes.Equal(inner, data) {
		t.Error("FlipBit changed the inner object")
	}
	put(t, fb, "a", data)
	if got := backendtest.Get(t, fb, "a"); !bytes.Equal(got, data) {
		t.Error("Put did not heal the flipped bit")
	}
}

func TestCorrupt(t *testing.T) {
	fb := fault.New(mem.New())
	put(t, fb, "a", []byte("hello"))
	fb.Corrupt(func(name string, off int64, p []byte) {
		if name == "a" {
			p[0] = 'J'
		}
	})
	if got := backendtest.Get(t, fb, "a"); string(got) != "Jello" {
		t.Errorf("got %q", got)
	}
	fb.Corrupt(nil)
	if got := backendtest.Get(t, fb, "a"); string(got) != "hello" {
		t.Errorf("got %q after removing Corrupt", got)
	}
}

func TestLose(t *testing.T) {
	fb := fault.New(mem.New())
	put(t, fb, "s/0", []byte("zero"))
	put(t, fb, "s/1", []byte("one"))
	fb.Lose("s/0")
	if _, err := fb.Stat(ctx, "s/0"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat lost = %v", err)
	}
	if _, err := fb.ReadAt(ctx, "s/0", make([]byte, 1), 0); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("ReadAt lost = %v", err)
	}
	if got := backendtest.Names(t, fb, "s/"); !slices.Equal(got, []string{"s/1"}) {
		t.Errorf("List = %q", got)
	}
	// Repair writes it back.
	put(t, fb, "s/0", []byte("ZERO"))
	if got := backendtest.Get(t, fb, "s/0"); string(got) != "ZERO" {
		t.Errorf("after repair Put: %q", got)
	}
	fb.LoseIf(func(n string) bool { return strings.HasSuffix(n, "1") })
	if _, err := fb.Stat(ctx, "s/1"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat of LoseIf name = %v", err)
	}
	fb.LoseIf(nil)
	if _, err := fb.Stat(ctx, "s/1"); err != nil {
		t.Errorf("Stat after LoseIf(nil) = %v", err)
	}
}

// TestCountsRanges shows the assertion higher layers make: which byte ranges
// of which shard a read touched.
func TestCountsRanges(t *testing.T) {
	fb := fault.New(mem.New())
	put(t, fb, "shard0", make([]byte, 1<<20))
	put(t, fb, "shard1", make([]byte, 1<<20))
	fb.ResetCounts()
	p := make([]byte, 4096)
	fb.ReadAt(ctx, "shard0", p, 8192)
	fb.ReadAt(ctx, "shard0", p[:100], 0)
	fb.Stat(ctx, "shard1")
	fb.Delete(ctx, "shard1")

	if got := fb.ReadRanges("shard0"); !slices.Equal(got, []fault.Range{{8192, 4096}, {0, 100}}) {
		t.Errorf("ReadRanges = %v", got)
	}
	if c := fb.Counts("shard0"); c.ReadAts != 2 || c.BytesRead != 4196 {
		t.Errorf("Counts(shard0) = %+v", c)
	}
	if c := fb.Counts("shard1"); c.ReadAts != 0 || c.Stats != 1 || c.Deletes != 1 {
		t.Errorf("Counts(shard1) = %+v", c)
	}
	if tot := fb.Total(); tot.BytesRead != 4196 || tot.Puts != 0 {
		t.Errorf("Total = %+v", tot)
	}
	if fb.Calls(fault.OpReadAt) != 2 {
		t.Errorf("Calls(readat) = %d", fb.Calls(fault.OpReadAt))
	}
}

// Faults may be reprogrammed while other goroutines use the backend, and
// fault funcs may call back into the wrapper.
func TestConcurrentReprogramming(t *testing.T) {
	fb := fault.New(mem.New())
	for i := range 8 {
		put(t, fb, fmt.Sprintf("o/%d", i), backendtest.Data(uint64(i), 1000))
	}
	fb.Fail(fault.OpStat, func(c fault.Call) error {
		_ = fb.Counts(c.Name) // re-entrant
		return nil
	})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 100)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("o/%d", (i+g)%8)
				fb.ReadAt(ctx, name, p, 10)
				fb.Stat(ctx, name)
				put(t, fb, name, backendtest.Data(uint64(i), 1000))
			}
		}()
	}
	for i := range 200 {
		rm := fb.Fail(fault.OpReadAt, fault.Nth(i, fault.ErrInjected))
		fb.FlipBit("o/1", int64(i), 1)
		fb.Lose("o/2")
		fb.ShortRead(func(fault.Call) int { return -1 })
		rm()
		if i%50 == 0 {
			fb.Reset()
			fb.ResetCounts()
		}
	}
	close(stop)
	wg.Wait()
}
