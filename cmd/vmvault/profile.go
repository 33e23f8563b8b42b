package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"

	"github.com/spf13/cobra"
)

// profileFlags are hidden admin/debug flags of the data commands (backup,
// restore, mount): Go pprof profiles of one run, for `go tool pprof`.
type profileFlags struct {
	cpu, block, mutex, mem, trace string

	cpuFile, traceFile *os.File
}

func (p *profileFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&p.cpu, "cpuprofile", "", "write a CPU profile to FILE (debug)")
	fs.StringVar(&p.block, "blockprofile", "", "write a goroutine blocking profile to FILE (debug)")
	fs.StringVar(&p.mutex, "mutexprofile", "", "write a mutex contention profile to FILE (debug)")
	fs.StringVar(&p.mem, "memprofile", "", "write a heap profile to FILE at the end (debug)")
	fs.StringVar(&p.trace, "trace", "", "write a Go execution trace to FILE, for `go tool trace` (debug)")
	for _, n := range []string{"cpuprofile", "blockprofile", "mutexprofile", "memprofile", "trace"} {
		_ = fs.MarkHidden(n)
	}
}

// start begins the requested profiles; stop (always call it) writes them.
func (p *profileFlags) start() error {
	if p.block != "" {
		runtime.SetBlockProfileRate(10000) // one sample per 10 µs blocked
	}
	if p.mutex != "" {
		runtime.SetMutexProfileFraction(10)
	}
	if p.cpu != "" {
		f, err := os.Create(p.cpu)
		if err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("cpuprofile: %w", err)
		}
		p.cpuFile = f
	}
	if p.trace != "" {
		f, err := os.Create(p.trace)
		if err != nil {
			return fmt.Errorf("trace: %w", err)
		}
		if err := trace.Start(f); err != nil {
			f.Close()
			return fmt.Errorf("trace: %w", err)
		}
		p.traceFile = f
	}
	return nil
}

func (p *profileFlags) stop() {
	if p.cpuFile != nil {
		pprof.StopCPUProfile()
		p.cpuFile.Close()
		p.cpuFile = nil
	}
	if p.traceFile != nil {
		trace.Stop()
		p.traceFile.Close()
		p.traceFile = nil
	}
	write := func(name, path string) {
		if path == "" {
			return
		}
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			return
		}
		defer f.Close()
		if name == "heap" {
			runtime.GC()
		}
		if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
			fmt.Fprintf(os.Stderr, "%s profile: %v\n", name, err)
		}
	}
	write("block", p.block)
	write("mutex", p.mutex)
	write("heap", p.mem)
}
