// Command qconv-bench is qconv's reproducible end-to-end benchmark. It
// generates a synthetic Llama-7B-like safetensors checkpoint
// of a given size (embeddings, q/k/v/o, gate/up/down, norms, lm_head;
// sharded with an index as transformers writes it), builds the qconv
// binary once, warms the page cache with one untimed round, and then
// runs, alternating (each round starting with the next command), at
// least three times each:
//
//   - cp -r of the input (and cp -r followed by sync, since convert fsyncs
//     its output and cp does not),
//   - qconv convert with default flags (NF4, blocksize 64, double quant)
//     into a fresh directory,
//   - qconv audit of the input,
//   - the host's own yardsticks: -readers goroutines reading
//     the input from the page cache (pread, 256 KiB at a time), and
//     writing as many bytes as the output has into one file (pwrite, 512
//     KiB at a time, early writeback, fsync), and for comparison into one
//     file per writer (the kernel serialises buffered writes to one file),
//   - with -jobs, qconv convert at each of the given -j values.
//
// It prints the median, min and max wall time of each, the ratios of
// every convert to cp -r, to cp -r + sync and to the yardstick (read +
// write into one file), the input MB/s, the children's CPU time, and the
// peak RSS (wait4's ru_maxrss) of every qconv run. Outputs are deleted
// after each run, and the disks are synced between runs, untimed.
//
// Usage (from the repository root):
//
//	go run ./cmd/qconv-bench                     # 2 GB bf16, 3 runs
//	go run ./cmd/qconv-bench -size 8GB           # shows that peak RSS does not grow
//	go run ./cmd/qconv-bench -size 8GB -dtype f32
//	go run ./cmd/qconv-bench -cpuprofile /tmp/convert.pprof
//	go run ./cmd/qconv-bench -generate-only -size 8GB   # print the input's path, time nothing
//	go run ./cmd/qconv-bench -size 13.5GB -jobs 1,2,4,8,16 \
//		-cpuprofile cpu.pprof -blockprofile block.pprof -profile-workers 16
//
// It generates the input itself (internal/synth). With -qconv naming a
// prebuilt binary it needs no Go toolchain, so it can run on another
// machine (pin it to two CPUs with taskset -c 0,1 to compare with a
// 2-core laptop).
//
// The input is kept in -dir and reused by later runs of the same size and
// dtype; -clean removes it at the end.
//
// If the qconv binary has no convert command yet, the benchmark converts
// with the convert package in a child process of its own (same defaults;
// the table says so); if it has no audit command, audit is skipped with a
// note. -cpuprofile always profiles one extra, untimed, library convert
// of the input in a child process.
//
// It is a measuring tool, not a test: it checks nothing about the output
// except that each command succeeded.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"syscall"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/internal/procs"
)

// childFlag is the hidden flag that makes the benchmark act as the child
// that converts with the library: qconv-bench -child-convert SRC DST.
const childFlag = "child-convert"

type config struct {
	size       int64
	sizeArg    string
	dtype      string
	dir        string
	runs       int
	shard      string
	qconv      string
	convert    string // auto, cli, lib
	cp, cpSync bool
	clean      bool
	regen      bool
	cpuprofile string
	trace      string
	genOnly    bool
	loraRank   int64
	// Scaling: -jobs, the yardsticks, the profiles.
	jobsArg      string
	jobs         []int // qconv convert -j values; nil: qconv's default
	yardstick    bool
	readers      int
	genWorkers   int
	warmup       bool
	audit        bool
	blockprofile string
	mutexprofile string
	profWorkers  int
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("qconv-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.sizeArg, "size", "2GB", "approximate input size (decimal units: 2GB, 8GB, 500MB)")
	fs.StringVar(&c.dtype, "dtype", "bf16", "dtype of the synthetic weights: bf16 or f32 (f16 also works)")
	fs.StringVar(&c.dir, "dir", filepath.Join(os.TempDir(), "qconv-bench"), "working directory for the input, the outputs and the binaries")
	fs.IntVar(&c.runs, "runs", 3, "timed runs of each command (at least 1; the median of 3 is the reported number)")
	fs.StringVar(&c.shard, "shard", "1GB", "largest input shard file (so that the input is sharded with an index)")
	fs.StringVar(&c.qconv, "qconv", "", "prebuilt qconv binary (default: go build -o DIR/bin/qconv ./cmd/qconv)")
	fs.StringVar(&c.convert, "convert", "auto", "how to convert: cli (qconv convert), lib (the convert package in a child process), auto (cli if the binary has it)")
	fs.BoolVar(&c.cp, "cp", true, "time cp -r of the input")
	fs.BoolVar(&c.cpSync, "cp-sync", true, "also time cp -r followed by sync")
	fs.BoolVar(&c.clean, "clean", false, "remove the input at the end")
	fs.BoolVar(&c.regen, "regen", false, "regenerate the input even if a complete one exists")
	fs.BoolVar(&c.genOnly, "generate-only", false, "only generate (or reuse) the input, print its directory on stdout and exit: nothing is built or timed")
	fs.Int64Var(&c.loraRank, "lora-rank", 0, "with -generate-only: also write a PEFT LoRA adapter of this rank on every Linear weight of the input (for qconv merge), and print its directory on a second line")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "after the timed runs, profile one library convert of the input and write the CPU profile here")
	fs.StringVar(&c.jobsArg, "jobs", "", "comma-separated qconv convert -j values to time each (default: qconv's default, one worker per CPU)")
	fs.BoolVar(&c.yardstick, "yardstick", true, "also time the host's own limits: parallel reads of the input from the page cache, and parallel writes of the output's size (+ fsync)")
	fs.IntVar(&c.readers, "readers", runtime.NumCPU(), "goroutines of the read and write yardsticks")
	fs.IntVar(&c.genWorkers, "gen-workers", runtime.NumCPU(), "input shard files generated at the same time")
	fs.BoolVar(&c.warmup, "warmup", true, "run one untimed round first (warms the page cache)")
	fs.BoolVar(&c.audit, "audit", true, "also time qconv audit of the input")
	fs.StringVar(&c.blockprofile, "blockprofile", "", "like -cpuprofile, for the blocking profile (the same profiled convert)")
	fs.StringVar(&c.mutexprofile, "mutexprofile", "", "like -cpuprofile, for the mutex contention profile (the same profiled convert)")
	fs.StringVar(&c.trace, "trace", "", "like -cpuprofile, for a runtime execution trace (go tool trace FILE; the same profiled convert)")
	fs.IntVar(&c.profWorkers, "profile-workers", 0, "workers of the profiled convert (0: one per CPU)")
	child := fs.Bool(childFlag, false, "internal: convert SRC DST with the convert package (used by -convert lib)")
	childRd := fs.Bool("child-read", false, "internal: the read yardstick: read the .safetensors files of DIR with -readers goroutines")
	childWr := fs.Int64("child-write", 0, "internal: the write yardstick: write this many bytes into DIR with -readers goroutines")
	childWrFiles := fs.Bool("child-write-files", false, "internal: the write yardstick writes one file per goroutine")
	childWrMap := fs.Bool("child-write-mmap", false, "internal: the write yardstick copies into a shared mapping of its one file instead of pwriting")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *child {
		return childConvert(fs.Args(), &c, stderr)
	}
	if *childRd || *childWr > 0 {
		if fs.NArg() != 1 || c.readers < 1 {
			fmt.Fprintln(stderr, "qconv-bench: the yardsticks want one DIR and -readers >= 1")
			return 2
		}
		var err error
		if *childRd {
			err = childRead(fs.Arg(0), c.readers, stdout)
		} else {
			err = childWrite(fs.Arg(0), c.readers, *childWr, *childWrFiles, *childWrMap, stdout)
		}
		if err != nil {
			fmt.Fprintln(stderr, "qconv-bench:", err)
			return 1
		}
		return 0
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "qconv-bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	size, err := convert.ParseSize(c.sizeArg)
	if err != nil {
		fmt.Fprintln(stderr, "qconv-bench:", err)
		return 2
	}
	c.size = size
	if c.runs < 1 {
		fmt.Fprintln(stderr, "qconv-bench: -runs must be at least 1")
		return 2
	}
	if c.jobs, err = parseJobs(c.jobsArg); err != nil {
		fmt.Fprintln(stderr, "qconv-bench:", err)
		return 2
	}
	if c.readers < 1 || c.genWorkers < 1 || c.profWorkers < 0 {
		fmt.Fprintln(stderr, "qconv-bench: -readers and -gen-workers must be at least 1, -profile-workers at least 0")
		return 2
	}
	switch c.convert {
	case "auto", "cli", "lib":
	default:
		fmt.Fprintf(stderr, "qconv-bench: -convert %q: want auto, cli or lib\n", c.convert)
		return 2
	}
	if err := bench(context.Background(), &c, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "qconv-bench:", err)
		return 1
	}
	return 0
}

// parseJobs parses the -jobs list.
func parseJobs(s string) ([]int, error) {
	if s == "" {
		return nil, nil
	}
	var js []int
	for _, f := range strings.Split(s, ",") {
		j, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || j < 1 {
			return nil, fmt.Errorf("-jobs %q: want comma-separated numbers of workers (1,2,4,8,16)", s)
		}
		js = append(js, j)
	}
	return js, nil
}

// childConvert converts args[0] to args[1] with default options, as
// qconv convert would (with -profile-workers workers), optionally under
// the CPU, blocking and mutex profilers.
func childConvert(args []string, c *config, stderr io.Writer) int {
	if len(args) != 2 {
		fmt.Fprintln(stderr, "qconv-bench: -child-convert wants SRC DST")
		return 2
	}
	procs.Raise() // as qconv's main does
	if c.blockprofile != "" {
		runtime.SetBlockProfileRate(10_000) // one event per 10 µs blocked
		defer writeProfile("block", c.blockprofile, stderr)
	}
	if c.mutexprofile != "" {
		runtime.SetMutexProfileFraction(10)
		defer writeProfile("mutex", c.mutexprofile, stderr)
	}
	for _, p := range []struct {
		path  string
		start func(io.Writer) error
		stop  func()
	}{
		{c.trace, trace.Start, trace.Stop},
		{c.cpuprofile, pprof.StartCPUProfile, pprof.StopCPUProfile},
	} {
		if p.path == "" {
			continue
		}
		stop, err := startRecording(p.path, p.start, p.stop)
		if err != nil {
			fmt.Fprintln(stderr, "qconv-bench:", err)
			return 1
		}
		defer stop()
	}
	if _, err := convert.Convert(context.Background(), args[0], args[1], convert.Options{Log: stderr, Workers: c.profWorkers}); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// startRecording creates path and starts a recording into it (the CPU
// profiler, the execution tracer); the returned func stops it and closes
// the file.
func startRecording(path string, start func(io.Writer) error, stop func()) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		stop()
		f.Close()
	}, nil
}

// writeProfile writes the named runtime profile to path.
func writeProfile(name, path string, stderr io.Writer) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup(name).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "qconv-bench:", err)
	}
}

// moduleRoot returns the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run qconv-bench from inside the qconv module (go run ./cmd/qconv-bench)")
	}
	return filepath.Dir(mod), nil
}

// goBuild builds the package pkg of the module at root into out.
func goBuild(root, pkg, out string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

// hasCommand reports whether the qconv binary knows the subcommand name.
func hasCommand(qconv, name string) bool {
	out, _ := exec.Command(qconv, "help", name).CombinedOutput()
	return !strings.Contains(string(out), "unknown command")
}

// freeBytes returns the bytes available to an unprivileged user on the
// file system holding dir.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// memAvailable returns MemAvailable from /proc/meminfo, or 0.
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "MemAvailable: %d kB", &kb); err == nil {
			return kb << 10
		}
	}
	return 0
}

// loadAvg returns the first three fields of /proc/loadavg, or "?".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
