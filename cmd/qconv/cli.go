package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/formats/checkpoint"
)

// newFlagSet returns a FlagSet for a command that reports errors through
// parseFlags rather than printing them itself.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseFlags parses args into fs, allowing flags before, between and
// after positional arguments (Go's flag package stops at the first
// positional); "--" ends the flags and a lone "-" is positional. It returns
// the positional arguments in order.
//
// If ok is false the command must return code: exitOK after printing help
// for -h/--help (usage, then the flags, to stdout), exitError after
// printing a usage error to stderr.
func parseFlags(fs *flag.FlagSet, usage string, args []string, stdout, stderr io.Writer) (positional []string, code int, ok bool) {
	var flagArgs []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			positional = append(positional, a)
			continue
		}
		flagArgs = append(flagArgs, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil || isBoolFlag(f) {
			continue // unknown flags are reported by fs.Parse below
		}
		if i+1 < len(args) { // the value is the next argument, whatever it looks like
			i++
			flagArgs = append(flagArgs, args[i])
		}
	}
	err := fs.Parse(flagArgs)
	if errors.Is(err, flag.ErrHelp) {
		printCommandHelp(stdout, fs, usage)
		return nil, exitOK, false
	}
	if err == nil && fs.NArg() > 0 { // cannot happen: flagArgs holds only flags and their values
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err != nil {
		return nil, usageError(stderr, fs.Name(), "%v", err), false
	}
	return positional, exitOK, true
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// printCommandHelp writes a command's usage text and its flags.
func printCommandHelp(w io.Writer, fs *flag.FlagSet, usage string) {
	fmt.Fprint(w, strings.TrimSpace(usage)+"\n")
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprint(w, "\nFlags:\n")
		printFlags(w, fs)
	}
}

// printFlags lists fs's flags as flag.PrintDefaults does, but spelt the way
// the help texts and users write them: --name for long flags, -j for
// one-letter ones.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		dash := "--"
		if len(f.Name) == 1 {
			dash = "-"
		}
		arg, usage := flag.UnquoteUsage(f)
		line := "  " + dash + f.Name
		if arg != "" {
			line += " " + arg
		}
		line += "\n    \t" + strings.ReplaceAll(usage, "\n", "\n    \t")
		if d := f.DefValue; d != "" && d != "false" && d != "0" && d != "[]" {
			if arg == "string" {
				d = fmt.Sprintf("%q", d)
			}
			line += fmt.Sprintf(" (default %s)", d)
		}
		fmt.Fprintln(w, line)
	})
}

// usageError prints "qconv <cmd>: <msg>" and a hint to stderr and returns
// exitError.
func usageError(stderr io.Writer, cmd, format string, args ...any) int {
	fmt.Fprintf(stderr, "qconv %s: %s\nRun 'qconv help %s' for usage.\n", cmd, fmt.Sprintf(format, args...), cmd)
	return exitError
}

// printError writes err to stderr as one line, "qconv: FILE: TENSOR:
// PROBLEM" for checkpoint problems, "qconv: " + err otherwise.
func printError(stderr io.Writer, err error) {
	fmt.Fprintln(stderr, "qconv: "+errorLine(err))
}

func errorLine(err error) string {
	var p *checkpoint.Problem
	if errors.As(err, &p) && p.Msg != "" {
		parts := make([]string, 0, 3)
		if p.File != "" {
			parts = append(parts, p.File)
		}
		if p.Tensor != "" {
			parts = append(parts, tensorName(p.Tensor))
		}
		parts = append(parts, p.Msg)
		return strings.Join(parts, ": ")
	}
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// tensorName returns name as is when it is plain, quoted otherwise.
func tensorName(name string) string {
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return strconv.Quote(name)
		}
	}
	return name
}

// humanBytes formats n in binary units: "512 B", "1.91 MiB", "3.80 GiB".
func humanBytes(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f := float64(n) / 1024
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.2f %s", f, units[i])
}

// humanCount formats a parameter count with a decimal suffix: "500.35K",
// "6.74B".
func humanCount(n int64) string {
	const units = "KMBT"
	if n < 1000 {
		return strconv.FormatInt(n, 10)
	}
	f := float64(n) / 1000
	i := 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	return fmt.Sprintf("%.2f%c", f, units[i])
}

// outputFlags are the flags of the commands that write a checkpoint
// directory (convert, dequant).
type outputFlags struct {
	maxShard, progress string
	asJSON, force      bool
}

func addOutputFlags(fs *flag.FlagSet) *outputFlags {
	o := &outputFlags{}
	fs.StringVar(&o.maxShard, "max-shard-size", "50GB", "largest output shard, as transformers' max_shard_size (5GB, 200MB, 512MiB)")
	fs.StringVar(&o.progress, "progress", "auto", "progress display on stderr: auto (a bar on a terminal), always (a plain line every 5 s off a terminal), never")
	fs.BoolVar(&o.asJSON, "json", false, "write a JSON summary to stdout")
	fs.BoolVar(&o.force, "force", false, "allow a non-empty DST: replace its files of the same names and stale weight files")
	return o
}

// check checks the flags' values and returns the max shard size. If ok is
// false, command cmd must return code (a usage error was printed).
func (o *outputFlags) check(cmd string, stderr io.Writer) (maxShard int64, code int, ok bool) {
	maxShard, err := convert.ParseSize(o.maxShard)
	if err != nil {
		return 0, usageError(stderr, cmd, "--max-shard-size: %v", err), false
	}
	switch o.progress {
	case "auto", "always", "never":
	default:
		return 0, usageError(stderr, cmd, "--progress %q: want auto, always or never", o.progress), false
	}
	return maxShard, exitOK, true
}

// run runs command cmd's work, fn, with a context that Ctrl-C and SIGTERM
// cancel and a --progress display labelled label on stderr, which fn
// updates through progress.
func (o *outputFlags) run(cmd, label string, stderr io.Writer, fn func(ctx context.Context, progress func(done, total int64)) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep := startProgress(o.progress, stderr, cmd, label)
	err := fn(ctx, rep.update)
	rep.stop(err == nil)
	return err
}

// writeJSON writes v to stdout as indented JSON and a newline, and returns
// the exit code.
func writeJSON(stdout, stderr io.Writer, v any) int {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		printError(stderr, err)
		return exitError
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return exitOK
}

// nonNil returns s, or an empty slice (JSON [], not null) for nil.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// progressReporter shows the progress of a command on stderr: a progress bar on
// a terminal, plain lines at most every few seconds otherwise ("always"),
// or nothing. Updates come from worker goroutines; one goroutine renders.
type progressReporter struct {
	done, total atomic.Int64
	quit        chan struct{}
	wg          sync.WaitGroup
	w           io.Writer
	bar         *progressbar.ProgressBar
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// startProgress starts showing progress on w in the given mode (auto,
// always or never): a bar described by label ("converting"), or plain
// lines "qconv: CMD: ...".
func startProgress(mode string, w io.Writer, cmd, label string) *progressReporter {
	r := &progressReporter{quit: make(chan struct{}), w: w}
	term := isTerminal(w)
	if mode == "never" || (mode == "auto" && !term) {
		return r
	}
	interval := 5 * time.Second
	if term {
		interval = 200 * time.Millisecond
		r.bar = progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(label),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionFullWidth(),
			progressbar.OptionThrottle(100*time.Millisecond),
		)
	}
	start := time.Now()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-r.quit:
				return
			case <-t.C:
			}
			done, total := r.done.Load(), r.total.Load()
			if total == 0 {
				continue
			}
			if r.bar != nil {
				if r.bar.GetMax64() != total {
					r.bar.ChangeMax64(total)
				}
				r.bar.Set64(done)
				continue
			}
			secs := time.Since(start).Seconds()
			rate := float64(done) / 1e6 / secs
			eta := "?"
			if done > 0 {
				eta = time.Duration(float64(total-done) / float64(done) * secs * float64(time.Second)).Round(time.Second).String()
			}
			fmt.Fprintf(w, "qconv: %s: %s / %s (%.0f%%), %.0f MB/s, ETA %s\n",
				cmd, humanBytes(done), humanBytes(total), 100*float64(done)/float64(total), rate, eta)
		}
	}()
	return r
}

// update records progress; it keeps the largest done value, since calls
// from several workers may arrive out of order.
func (r *progressReporter) update(done, total int64) {
	r.total.Store(total)
	for {
		cur := r.done.Load()
		if done <= cur || r.done.CompareAndSwap(cur, done) {
			return
		}
	}
}

func (r *progressReporter) stop(ok bool) {
	close(r.quit)
	r.wg.Wait()
	if r.bar != nil {
		if ok {
			r.bar.Set64(r.total.Load())
			r.bar.Finish()
		}
		r.bar.Exit()
		fmt.Fprintln(r.w) // end the bar's line
	}
}
