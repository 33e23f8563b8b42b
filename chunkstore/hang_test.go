package chunkstore

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

func TestHangHunt(t *testing.T) {
	c, _ := newCodec(4096, 0, nil, 1)
	aead, _ := newGCM(bytes.Repeat([]byte{7}, 32))
	sc, _ := newCodec(4096, 0, aead, 1)
	run := func(head []byte, stored int64) {
		ft, err := parseFrameTable(head, stored)
		if err != nil || ft.storedLen() != int64(len(head)) {
			return
		}
		cc := c
		if ft.sealed {
			cc = sc
		}
		for i, fe := range ft.frames {
			dst := make([]byte, ft.rawFrameLen(i))
			cc.decodeFrame(dst, ID{1}, ft, i, head[fe.off:fe.off+int64(fe.stored)])
		}
	}
	seeds := seedBlobs(t)
	files, _ := filepath.Glob(filepath.Join(os.Getenv("GOCACHE_FUZZ"), "*"))
	t.Logf("%d cache files", len(files))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		t.Logf("%s: %d bytes", filepath.Base(f), len(b))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for it := 0; it < 200000; it++ {
		b := append([]byte(nil), seeds[r.IntN(len(seeds))]...)
		for range 1 + r.IntN(4) {
			if len(b) > 0 {
				b[r.IntN(len(b))] = byte(r.Uint32())
			}
		}
		done := make(chan struct{})
		go func() { run(b, int64(len(b))); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			os.WriteFile("/tmp/hang_input", b, 0o644)
			t.Fatalf("hang at iteration %d:\n%s", it, buf[:n])
		}
	}
}
