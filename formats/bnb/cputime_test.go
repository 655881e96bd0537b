package bnb

import (
	"flag"
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/qconv/qconv/formats/dtype"
)

var threadCPU = flag.Bool("bnb.threadcpu", false, "report the kernels' throughput per second of thread CPU time (steadier than the wall-clock benchmarks on a busy machine)")

// threadTime returns the CPU time the calling OS thread has used.
func threadTime(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		t.Skip("no per-thread CPU time:", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestThreadCPUThroughput runs each kernel on benchN elements until it has
// used a second of its thread's CPU time and reports input MB per CPU
// second, the best of five rounds. Run it with
//
//	go test -run ThreadCPU -bnb.threadcpu -v ./formats/bnb/
func TestThreadCPUThroughput(t *testing.T) {
	if !*threadCPU {
		t.Skip("-bnb.threadcpu not set")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	measure := func(name string, bytes int, fn func()) {
		fn()
		best := 0.0
		for range 5 {
			start, iters := threadTime(t), 0
			for threadTime(t)-start < 200*time.Millisecond {
				fn()
				iters++
			}
			cpu := threadTime(t) - start
			best = max(best, float64(bytes*iters)/cpu.Seconds()/1e6)
		}
		t.Logf("%-46s %6.0f MB/s per CPU second", name, best)
	}
	for _, p := range benchPairs {
		raw := benchRaw(benchN, p[0])
		for _, q := range []QuantType{NF4, FP4} {
			for _, simd := range []bool{true, false} {
				name := fmt.Sprintf("QuantizeRaw %v→%v %v bs64", p[0], p[1], q)
				if !simd {
					name += " portable"
				}
				dst := make([]byte, PackedBytes(benchN))
				absmax := make([]float32, NumBlocks(benchN, 64))
				measure(name, len(raw), func() {
					_, _ = quantizeRaw(dst, absmax, raw, p[0], p[1], 64, q, simd)
				})
			}
		}
		absmax := make([]float32, NumBlocks(benchN, 64))
		measure(fmt.Sprintf("BlockAbsmaxRaw %v→%v bs64", p[0], p[1]), len(raw), func() {
			_, _ = BlockAbsmaxRaw(absmax, raw, p[0], p[1], 64)
		})
	}
	raw := benchRaw(benchN, dtype.BF16)
	vals := make([]float32, 64<<10)
	dst := make([]byte, PackedBytes(benchN))
	absmax := make([]float32, NumBlocks(benchN, 64))
	measure("via float32 (before) BF16 nf4 bs64", len(raw), func() {
		quantizeViaFloat32(dst, absmax, raw, vals)
	})
}
