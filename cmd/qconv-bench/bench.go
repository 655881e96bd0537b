package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/internal/synth"
)

// A sample is one timed run of a command.
type sample struct {
	wall   time.Duration
	cpu    time.Duration // user + system time of the child
	maxRSS int64         // the child's peak resident set, bytes
	out    string        // the child's standard output (the yardsticks report on it)
}

// A task is one command that is timed.
type task struct {
	name string
	// run runs the command once, writing into dst (which does not exist)
	// if it writes anything.
	run     func(ctx context.Context, dst string) (sample, error)
	showRSS bool // a qconv run: its peak RSS is reported
	convert bool // a qconv convert run: ratios are reported
	samples []sample
}

// child runs name with args and returns its wall time and rusage. Exit
// codes in okCodes other than 0 are accepted too (audit's 1: findings).
func child(ctx context.Context, name string, args []string, okCodes ...int) (sample, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !slices.Contains(okCodes, ee.ExitCode()) {
			return sample{}, fmt.Errorf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, tail(out.String(), 2000))
		}
	}
	s := rusage(cmd.ProcessState, wall)
	s.out = tail(stdout.String(), 1000)
	return s, nil
}

func rusage(ps *os.ProcessState, wall time.Duration) sample {
	s := sample{wall: wall, cpu: ps.UserTime() + ps.SystemTime()}
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		s.maxRSS = ru.Maxrss << 10 // kilobytes on Linux
	}
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// bench runs the whole benchmark described in the package documentation.
func bench(ctx context.Context, c *config, stdout, stderr io.Writer) error {
	elem, err := dtypeSize(c.dtype)
	if err != nil {
		return err
	}
	loadStart := loadAvg()
	if err := os.MkdirAll(c.dir, 0o777); err != nil {
		return err
	}
	bin := filepath.Join(c.dir, "bin")
	layers, want := layersFor(c.size, elem)

	// Disk: the input (unless reused), one cp -r copy and one convert
	// output (under 0.6 × input) live at the same time.
	free, err := freeBytes(c.dir)
	if err != nil {
		return err
	}
	need := want + want*6/10 + 256<<20
	if c.genOnly {
		need = 0
	}
	if _, err := os.Stat(filepath.Join(c.dir, fmt.Sprintf("in-%s-%dL.complete", strings.ToLower(c.dtype), layers))); err != nil || c.regen {
		need += want
	}
	if free < need {
		return fmt.Errorf("%s has %s free; this run needs about %s (use -dir elsewhere or a smaller -size)", c.dir, mb(free), mb(need))
	}

	if c.genOnly {
		src, err := input(c, layers)
		if err != nil {
			return err
		}
		inBytes, files, err := weightFiles(src)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "qconv-bench: input %s: %s of %s weights in %d files + index, %d tensors (%d Llama-7B layers)\n",
			src, mb(inBytes), c.dtype, files, tensorCount(layers), layers)
		fmt.Fprintln(stdout, src)
		if c.loraRank > 0 {
			d, err := convert.ParseDType(c.dtype)
			if err != nil {
				return err
			}
			ad := fmt.Sprintf("%s-lora-r%d", src, c.loraRank)
			fmt.Fprintf(stderr, "qconv-bench: writing a rank-%d LoRA adapter on every Linear weight to %s\n", c.loraRank, ad)
			if err := synth.WriteLoRA(ad, synth.Llama7B(layers, d), c.loraRank, 2); err != nil {
				return err
			}
			fmt.Fprintln(stdout, ad)
		}
		return nil
	}
	qconv := c.qconv
	if qconv == "" {
		// Only here is the go tool needed: a host with a prebuilt qconv,
		// or one that only generates the input, may have none.
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		qconv = filepath.Join(bin, "qconv")
		fmt.Fprintf(stderr, "qconv-bench: go build -o %s ./cmd/qconv\n", qconv)
		if err := goBuild(root, "./cmd/qconv", qconv); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	src, err := input(c, layers)
	if err != nil {
		return err
	}
	inBytes, files, err := weightFiles(src)
	if err != nil {
		return err
	}

	var notes []string
	convertName := "qconv convert"
	// convertCmd returns the command line of a convert with j workers
	// (0: the default).
	var convertCmd func(dst string, j int) (string, []string)
	useCLI := c.convert == "cli" || (c.convert == "auto" && hasCommand(qconv, "convert"))
	if useCLI {
		convertCmd = func(dst string, j int) (string, []string) {
			args := []string{"convert", src, dst}
			if j > 0 {
				args = append(args, "-j", strconv.Itoa(j))
			}
			return qconv, args
		}
	} else {
		convertName = "convert (library)*"
		notes = append(notes, "* the qconv binary has no convert command yet: converted with the convert package, default Options, in a child process (qconv-bench -child-convert)")
		convertCmd = func(dst string, j int) (string, []string) {
			return self, []string{"-" + childFlag, "-profile-workers", strconv.Itoa(j), src, dst}
		}
	}
	var outBytes int64 // the output's size, known after the first convert

	var tasks []*task
	if c.cp {
		tasks = append(tasks, &task{
			name: "cp -r",
			run: func(ctx context.Context, dst string) (sample, error) {
				return child(ctx, "cp", []string{"-r", src, dst})
			},
		})
	}
	if c.cp && c.cpSync {
		tasks = append(tasks, &task{
			name: "cp -r + sync",
			run: func(ctx context.Context, dst string) (sample, error) {
				start := time.Now()
				s, err := child(ctx, "cp", []string{"-r", src, dst})
				syscall.Sync()
				s.wall = time.Since(start)
				return s, err
			},
		})
	}
	if c.yardstick {
		n := strconv.Itoa(c.readers)
		tasks = append(tasks, &task{
			name: fmt.Sprintf("read ×%d (yardstick)", c.readers),
			run: func(ctx context.Context, _ string) (sample, error) {
				return child(ctx, self, []string{"-child-read", "-readers", n, src})
			},
		}, &task{
			name: fmt.Sprintf("write ×%d + fsync (yardstick)", c.readers),
			run: func(ctx context.Context, dst string) (sample, error) {
				return child(ctx, self, []string{"-child-write", strconv.FormatInt(outBytes, 10), "-readers", n, dst})
			},
		})
		if canMap {
			tasks = append(tasks, &task{
				name: fmt.Sprintf("write ×%d mapped + fsync (yardstick)", c.readers),
				run: func(ctx context.Context, dst string) (sample, error) {
					return child(ctx, self, []string{"-child-write", strconv.FormatInt(outBytes, 10), "-child-write-mmap", "-readers", n, dst})
				},
			})
		}
		tasks = append(tasks, &task{
			name: fmt.Sprintf("write ×%d, %d files + fsync", c.readers, c.readers),
			run: func(ctx context.Context, dst string) (sample, error) {
				return child(ctx, self, []string{"-child-write", strconv.FormatInt(outBytes, 10), "-child-write-files", "-readers", n, dst})
			},
		})
	}
	jobs := c.jobs
	if jobs == nil {
		jobs = []int{0}
	}
	var firstConvert *task
	for _, j := range jobs {
		name := convertName
		if j > 0 {
			name += fmt.Sprintf(" -j %d", j)
		}
		t := &task{
			name:    name,
			showRSS: true,
			convert: true,
			run: func(ctx context.Context, dst string) (sample, error) {
				name, args := convertCmd(dst, j)
				s, err := child(ctx, name, args)
				if err == nil && outBytes == 0 {
					outBytes = dirBytes(dst)
				}
				return s, err
			},
		}
		if firstConvert == nil {
			firstConvert = t
		}
		tasks = append(tasks, t)
	}
	if !c.audit {
	} else if hasCommand(qconv, "audit") {
		tasks = append(tasks, &task{
			name:    "qconv audit",
			showRSS: true,
			run: func(ctx context.Context, _ string) (sample, error) {
				return child(ctx, qconv, []string{"audit", src}, 1)
			},
		})
	} else {
		notes = append(notes, "qconv audit: skipped, the qconv binary has no audit command yet")
	}

	// One untimed round warms the page cache; the first convert measures
	// the output (the write yardsticks write as many bytes).
	warm := []*task{firstConvert}
	if c.warmup {
		for _, t := range tasks {
			if t != firstConvert {
				warm = append(warm, t)
			}
		}
	}
	fmt.Fprintf(stderr, "qconv-bench: warm-up (untimed): %d commands\n", len(warm))
	for _, t := range warm {
		dst := filepath.Join(c.dir, "out")
		os.RemoveAll(dst)
		if _, err := t.run(ctx, dst); err != nil {
			return err
		}
		if err := os.RemoveAll(dst); err != nil {
			return err
		}
		syscall.Sync()
	}
	for i := range c.runs {
		fmt.Fprintf(stderr, "qconv-bench: round %d/%d\n", i+1, c.runs)
		for k := range tasks {
			// Each round starts with the next command, so that a cost
			// of coming first (or after a given command) is shared.
			t := tasks[(i+k)%len(tasks)]
			dst := filepath.Join(c.dir, "out")
			s, err := t.run(ctx, dst)
			if err != nil {
				return err
			}
			t.samples = append(t.samples, s)
			fmt.Fprintf(stderr, "  %-20s %7.2fs  rss %s\n", t.name, s.wall.Seconds(), mib(s.maxRSS))
			if err := os.RemoveAll(dst); err != nil {
				return err
			}
			syscall.Sync()
		}
	}

	if c.cpuprofile != "" || c.blockprofile != "" || c.mutexprofile != "" || c.trace != "" {
		dst := filepath.Join(c.dir, "out")
		args := []string{"-" + childFlag, "-profile-workers", strconv.Itoa(c.profWorkers)}
		var files []string
		for _, p := range []struct{ flag, file string }{{"-cpuprofile", c.cpuprofile}, {"-blockprofile", c.blockprofile}, {"-mutexprofile", c.mutexprofile}, {"-trace", c.trace}} {
			if p.file != "" {
				args = append(args, p.flag, p.file)
				files = append(files, p.file)
			}
		}
		var looks []string
		if n := len(files); c.trace == "" || n > 1 {
			looks = append(looks, "go tool pprof -top "+strings.Join(files[:n-min(len(c.trace), 1)], " "))
		}
		if c.trace != "" {
			looks = append(looks, "go tool trace "+c.trace)
		}
		look := strings.Join(looks, "; ")
		fmt.Fprintf(stderr, "qconv-bench: profiling a library convert into %s\n", strings.Join(files, ", "))
		s, err := child(ctx, self, append(args, src, dst))
		if err != nil {
			return err
		}
		os.RemoveAll(dst)
		workers := "one per CPU"
		if c.profWorkers > 0 {
			workers = strconv.Itoa(c.profWorkers)
		}
		notes = append(notes, fmt.Sprintf("profile: library convert (%s workers) under pprof took %.2fs, CPU %.2fs; %s", workers, s.wall.Seconds(), s.cpu.Seconds(), look))
	}
	if c.clean {
		os.RemoveAll(src)
		os.Remove(src + ".complete")
	}

	for _, t := range tasks {
		if strings.Contains(t.name, "yardstick") || strings.Contains(t.name, "files + fsync") {
			for _, s := range t.samples {
				notes = append(notes, t.name+": "+strings.TrimSpace(s.out))
			}
		}
	}
	report(stdout, reportInfo{
		qconv: qconv, version: qconvVersion(qconv), src: src, dtype: c.dtype, layers: layers,
		inBytes: inBytes, files: files, outBytes: outBytes, runs: c.runs, tasks: tasks, notes: notes,
		load: loadStart + " at the start, " + loadAvg() + " at the end",
	})
	return nil
}

func qconvVersion(qconv string) string {
	out, err := exec.Command(qconv, "version").Output()
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

type reportInfo struct {
	qconv, version, src, dtype string
	load                       string
	layers, files, runs        int
	inBytes, outBytes          int64
	tasks                      []*task
	notes                      []string
}

// report prints the results table.
func report(w io.Writer, r reportInfo) {
	fmt.Fprintf(w, "qconv-bench: cp -r vs qconv convert and qconv audit on a synthetic Llama-7B-like checkpoint\n")
	fmt.Fprintf(w, "machine:  %s/%s, %d CPUs (%s), MemAvailable %s, %s\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), cpuModel(), mib(memAvailable()), runtime.Version())
	fmt.Fprintf(w, "load:     %s (1, 5, 15 min; other processes skew wall times)\n", r.load)
	fmt.Fprintf(w, "qconv:    %s (%s)\n", r.qconv, r.version)
	fmt.Fprintf(w, "input:    %s: %s of %s weights in %d files + index, %d tensors (%d Llama-7B layers)\n",
		r.src, mb(r.inBytes), r.dtype, r.files, tensorCount(r.layers), r.layers)
	if r.inBytes > 0 {
		fmt.Fprintf(w, "output:   %s (%.3f × input)\n", mb(r.outBytes), float64(r.outBytes)/float64(r.inBytes))
	}
	fmt.Fprintf(w, "runs:     %d timed of each, alternating (order rotated each round), after one untimed warm-up round; outputs deleted and disks synced between runs\n\n", r.runs)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "command\tmedian\tmin\tmax\tinput MB/s\tCPU (median)\tpeak RSS (max)\t")
	med := map[string]time.Duration{}
	for _, t := range r.tasks {
		walls := make([]time.Duration, len(t.samples))
		cpus := make([]time.Duration, len(t.samples))
		var rss int64
		for i, s := range t.samples {
			walls[i], cpus[i] = s.wall, s.cpu
			rss = max(rss, s.maxRSS)
		}
		m := median(walls)
		med[t.name] = m
		rssCol := "-"
		if t.showRSS {
			rssCol = mib(rss)
		}
		fmt.Fprintf(tw, "%s\t%.3fs\t%.3fs\t%.3fs\t%.0f\t%.2fs\t%s\t\n", t.name, m.Seconds(),
			slices.Min(walls).Seconds(), slices.Max(walls).Seconds(),
			float64(r.inBytes)/1e6/m.Seconds(), median(cpus).Seconds(), rssCol)
	}
	tw.Flush()
	fmt.Fprintln(w)

	// The host's own limit: reading the input and writing the output (the
	// faster of the ways to write one file).
	var yard, write time.Duration
	var yardName, writeName string
	for _, t := range r.tasks {
		switch {
		case strings.HasPrefix(t.name, "read ×"):
			yard += med[t.name]
			yardName += " + " + t.name
		case strings.HasPrefix(t.name, "write ×") && strings.HasSuffix(t.name, "+ fsync (yardstick)"):
			if writeName == "" || med[t.name] < write {
				write, writeName = med[t.name], t.name
			}
		}
	}
	if writeName != "" {
		yard += write
		yardName += " + " + writeName
	}
	if yardName != "" {
		fmt.Fprintf(w, "yardstick (%s): %.3fs\n", strings.TrimPrefix(yardName, " + "), yard.Seconds())
	}
	for _, t := range r.tasks {
		if !t.convert && !strings.Contains(t.name, "convert") {
			continue
		}
		for _, base := range []string{"cp -r", "cp -r + sync"} {
			if m, ok := med[base]; ok && m > 0 {
				fmt.Fprintf(w, "ratio %s / %s: %.2f\n", t.name, base, float64(med[t.name])/float64(m))
			}
		}
		if yard > 0 {
			fmt.Fprintf(w, "ratio %s / yardstick: %.2f\n", t.name, float64(med[t.name])/float64(yard))
		}
	}
	for _, t := range r.tasks {
		if !t.showRSS {
			continue
		}
		var rs []string
		for _, s := range t.samples {
			rs = append(rs, mib(s.maxRSS))
		}
		fmt.Fprintf(w, "peak RSS of each %s run: %s\n", t.name, strings.Join(rs, ", "))
	}
	for _, n := range r.notes {
		fmt.Fprintln(w, n)
	}
}

// median returns the median of ds (the mean of the middle two for an
// even count), or 0 for none.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// mb formats a byte count in decimal megabytes.
func mb(n int64) string { return fmt.Sprintf("%.0f MB", float64(n)/1e6) }

// mib formats a byte count in binary mebibytes.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
