// Package procs sets how many goroutines the Go scheduler runs at once
// (GOMAXPROCS) for qconv's commands, whose workers spend much of their
// time in system calls.
//
// A goroutine in a system call keeps its P (the scheduler's right to run
// Go code) until the call returns or the runtime's monitor takes the P
// away, which happens tens of microseconds to milliseconds later. With
// one P per CPU, a worker that the job dispatcher wakes, or the
// dispatcher itself, waits for a P while the other workers are in pwrite
// or madvise, and a CPU stays idle. On the 2-core VM the execution trace
// of a 2 GB convert at 2 workers had 0.37 s of such waiting in 0.9 s, and
// GOMAXPROCS=3 or 4 made the convert 15-20 % faster (docs/benchmark.md,
// 3 December 2026). Spare Ps cost nothing when unused: they only let a
// runnable goroutine run while another is in the kernel; the number of
// workers is set separately (-j).
//
// CPUs is the default number of workers everywhere in qconv, library and
// commands. Raise is for the qconv commands' main functions only, not for
// library code: GOMAXPROCS is the whole process's setting.
package procs

import (
	"os"
	"runtime"
)

// Spare is the number of Ps added to Go's default GOMAXPROCS (the number
// of CPUs the process may use). Measured: see the package documentation
// and docs/benchmark.md.
const Spare = 2

// cpus is GOMAXPROCS as the runtime set it at start, before Raise.
var cpus = runtime.GOMAXPROCS(0)

// CPUs returns the number of CPUs the process may use, as Go's runtime
// determined it at start: the CPUs of its affinity mask, fewer under a
// cgroup CPU limit (a container's, a Kubernetes pod's), or the GOMAXPROCS
// environment variable where it is set. It is what "-j 0" means; Raise
// does not change it. (runtime.NumCPU ignores cgroup limits: on a 64-CPU
// node a pod limited to 4 CPUs would run 64 workers.)
func CPUs() int { return cpus }

// Raise sets GOMAXPROCS to CPUs() + Spare and returns the new value,
// unless the GOMAXPROCS environment variable is set: then the user's
// value stays, and Raise returns it.
func Raise() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	runtime.GOMAXPROCS(cpus + Spare)
	return cpus + Spare
}
