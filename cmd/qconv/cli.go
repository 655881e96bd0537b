package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"golang.org/x/term"

	"github.com/qconv/qconv/audit/rules"
	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/editdist"
	"github.com/qconv/qconv/internal/procs"
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
// positional); "--" ends the flags and a lone "-" is positional. A flag is
// written -name or --name, its value after "=" or as the next argument
// (whatever it looks like); a boolean flag takes a value only after "=".
// It returns the positional arguments in order.
//
// Errors name flags as --name (-j for one-letter flags), as the help texts
// do, and an unknown flag gets a "did you mean" for a near miss.
//
// If ok is false the command must return code: exitOK after printing help
// for -h/--help (usage, then the flags, to stdout), exitError after
// printing a usage error to stderr.
func parseFlags(fs *flag.FlagSet, usage string, args []string, stdout, stderr io.Writer) (positional []string, code int, ok bool) {
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
		name := strings.TrimPrefix(a[1:], "-")
		name, value, hasValue := strings.Cut(name, "=")
		if name == "h" || name == "help" {
			printCommandHelp(stdout, fs, usage)
			return nil, exitOK, false
		}
		f := fs.Lookup(name)
		if f == nil || name == "" || strings.HasPrefix(name, "-") {
			msg := "unknown flag " + flagName(name)
			if s := suggest(name, flagNames(fs)); s != "" {
				msg += "; did you mean " + flagName(s) + "?"
			}
			return nil, usageError(stderr, fs.Name(), "%s", msg), false
		}
		if !hasValue {
			if isBoolFlag(f) {
				value = "true"
			} else if i+1 < len(args) {
				i++
				value = args[i]
			} else {
				return nil, usageError(stderr, fs.Name(), "%s needs a value", flagName(name)), false
			}
		}
		if err := fs.Set(name, value); err != nil {
			return nil, usageError(stderr, fs.Name(), "%s %q: %s", flagName(name), value, flagValueError(f, err)), false
		}
	}
	return positional, exitOK, true
}

// flagName spells a flag as the help texts do: --name, or -j for a
// one-letter name.
func flagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

func flagNames(fs *flag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return names
}

// flagValueError turns the error of f's Set into words. (The flag
// package's own values fail with "parse error" and "value out of range".)
func flagValueError(f *flag.Flag, err error) string {
	switch err.Error() {
	case "parse error":
		if isBoolFlag(f) {
			return "want true or false"
		}
		return "not a number"
	case "value out of range":
		return "out of range"
	}
	return err.Error()
}

// suggest returns the candidate nearest to s when it is a near miss (an
// edit distance of at most 2, and less than half of s), or "".
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		d := editdist.Distance(strings.ToLower(s), c)
		if d < bestD && 2*d < max(len(s), 2) {
			best, bestD = c, d
		}
	}
	return best
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

// printError writes err to stderr as one line in the style of every qconv
// error: "qconv CMD: FILE: TENSOR: problem; what to do".
func printError(stderr io.Writer, cmd string, err error) {
	fmt.Fprintf(stderr, "qconv %s: %s\n", cmd, escapeControl(errorLine(err)))
}

// escapeControl writes the control characters of s (an ESC or a newline
// from a file or tensor name) as Go escapes, so that an error message
// cannot paint the terminal or forge a line of output.
func escapeControl(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsPrint(r) {
			b.WriteRune(r)
		} else {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
	}
	return b.String()
}

// packagePrefixes are the prefixes that qconv's packages put on their
// errors ("convert: ...", "safetensors: ..."); the command's name replaces
// them.
var packagePrefixes = []string{"convert: ", "dequant: ", "verify: ", "audit: ", "checkpoint: ", "safetensors: ", "outdir: ", "pyjson: ", "bnb: "}

// errorLine renders err as FILE: TENSOR: problem. A file that
// formats/safetensors refused names the audit rule that reports it (the
// same ID as `qconv audit`), and a file whose first bytes cannot start a
// header is called what it is: not a safetensors file.
func errorLine(err error) string {
	var p *checkpoint.Problem
	if errors.As(err, &p) && p.Msg != "" {
		msg := p.Msg
		tensor := p.Tensor
		var fe *safetensors.FormatError
		if errors.As(p.Err, &fe) {
			msg, tensor = formatErrorLine(fe), fe.Tensor
			if notSafetensors(fe) && isLFSPointer(p.File) {
				msg = "a Git LFS pointer, not the file itself; fetch it (git lfs pull, or huggingface-cli download)"
			}
		}
		parts := make([]string, 0, 3)
		if p.File != "" {
			parts = append(parts, p.File)
		}
		if tensor != "" {
			parts = append(parts, tensorName(tensor))
		}
		parts = append(parts, msg)
		return strings.Join(parts, ": ")
	}
	line := strings.ReplaceAll(err.Error(), "\n", "; ")
	for trimmed := true; trimmed; {
		trimmed = false
		for _, pre := range packagePrefixes {
			if strings.HasPrefix(line, pre) {
				line, trimmed = line[len(pre):], true
			}
		}
	}
	return line
}

// formatErrorLine says what is wrong with a file that formats/safetensors
// refused, with the audit rule's ID and what to do.
func formatErrorLine(fe *safetensors.FormatError) string {
	id := rules.StructuralRuleID(fe.Code)
	switch {
	case notSafetensors(fe):
		return fmt.Sprintf("not a safetensors file (%s: %s); give the path of a .safetensors file or of a directory holding one", id, fe.Msg)
	default:
		return fmt.Sprintf("%s (%s, byte %d); the file is broken: re-download it or re-save the model with safetensors ('qconv audit --explain %s' says more)", fe.Msg, id, fe.Offset, id)
	}
}

// notSafetensors reports whether fe says that the first bytes of a file
// cannot begin a safetensors header: too short for the length prefix, a
// length no header has, or a header that does not start with '{'.
func notSafetensors(fe *safetensors.FormatError) bool {
	switch fe.Code {
	case safetensors.CodeTooShort, safetensors.CodeHeaderTooLarge, safetensors.CodeHeaderOutOfBounds:
		return true
	case safetensors.CodeHeaderNotObject, safetensors.CodeHeaderNotUTF8:
		return fe.Offset <= 8
	}
	return false
}

// lfsPointerPrefix starts a Git LFS pointer file (Git LFS specification,
// "The pointer file").
const lfsPointerPrefix = "version https://git-lfs.github.com/spec/"

// isLFSPointer reports whether the file at path is a Git LFS pointer: what
// a clone without git-lfs leaves in place of a large file.
func isLFSPointer(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, len(lfsPointerPrefix))
	_, err = io.ReadFull(f, b)
	return err == nil && string(b) == lfsPointerPrefix
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

// humanBytes formats n in decimal units, as --max-shard-size and the
// MB/s rates: "512 B", "2.00 MB", "3.80 GB". Every size qconv prints for
// people uses it, so that bars, lines and summaries agree.
func humanBytes(n int64) string {
	if n < 1000 && n > -1000 {
		return strconv.FormatInt(n, 10) + " B"
	}
	units := []string{"kB", "MB", "GB", "TB", "PB", "EB"}
	f := float64(n) / 1000
	i := 0
	for (f >= 999.995 || f <= -999.995) && i < len(units)-1 {
		f /= 1000
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

// workersFlag adds -j (and its long form --workers) to fs with the same
// meaning in every command: the number of parallel workers, 0 (the
// default) for all CPUs.
func workersFlag(fs *flag.FlagSet) *int {
	n := new(int)
	fs.IntVar(n, "workers", 0, "number of parallel workers (0: all CPUs)")
	fs.IntVar(n, "j", 0, "shorthand for --workers")
	return n
}

// resolveWorkers checks a -j value and turns 0 into the number of CPUs
// the process may use (procs.CPUs: its affinity mask, a cgroup CPU limit,
// or GOMAXPROCS in the environment). If ok is false, command cmd must
// return code.
func resolveWorkers(cmd string, n int, stderr io.Writer) (workers, code int, ok bool) {
	if n < 0 {
		return 0, usageError(stderr, cmd, "-j %d: want 0 (all CPUs) or more", n), false
	}
	if n == 0 {
		n = procs.CPUs()
	}
	return n, exitOK, true
}

// progressFlag adds --progress to fs.
func progressFlag(fs *flag.FlagSet) *string {
	return fs.String("progress", "auto", "progress display on stderr: auto (on a terminal), always (also off a terminal: a line every 5 s), never")
}

// checkProgress checks a --progress value. If ok is false, command cmd
// must return code.
func checkProgress(cmd, mode string, stderr io.Writer) (code int, ok bool) {
	switch mode {
	case "auto", "always", "never":
		return exitOK, true
	}
	return usageError(stderr, cmd, "--progress %q: want auto, always or never", mode), false
}

// outputFlags are the flags of the commands that write a checkpoint
// directory (convert, dequant).
type outputFlags struct {
	maxShard, progress *string
	asJSON, force      *bool
}

func addOutputFlags(fs *flag.FlagSet) *outputFlags {
	o := &outputFlags{}
	o.maxShard = fs.String("max-shard-size", "50GB", "largest output shard, as transformers' max_shard_size (5GB, 200MB, 512MiB)")
	o.progress = progressFlag(fs)
	o.asJSON = fs.Bool("json", false, "write a JSON summary to stdout")
	o.force = fs.Bool("force", false, "allow a non-empty DST: replace its files of the same names and stale weight files")
	return o
}

// check checks the flags' values and returns the max shard size. If ok is
// false, command cmd must return code (a usage error was printed).
func (o *outputFlags) check(cmd string, stderr io.Writer) (maxShard int64, code int, ok bool) {
	maxShard, err := convert.ParseSize(*o.maxShard)
	if err != nil {
		return 0, usageError(stderr, cmd, "--max-shard-size: %s", errorLine(err)), false
	}
	if code, ok := checkProgress(cmd, *o.progress, stderr); !ok {
		return 0, code, false
	}
	return maxShard, exitOK, true
}

// withProgress runs command cmd's work, fn, with a --progress display
// (mode auto, always or never) labelled label on stderr, which fn updates
// through rep.update and writes other lines to through rep.println.
func withProgress(mode, cmd, label string, stderr io.Writer, fn func(rep *progressReporter) error) error {
	rep := startProgress(mode, stderr, cmd, label)
	err := fn(rep)
	rep.stop(err == nil)
	return err
}

// writeJSON writes v to stdout as indented JSON and a newline, and returns
// the exit code.
func writeJSON(cmd string, stdout, stderr io.Writer, v any) int {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		printError(stderr, cmd, err)
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

// progressReporter shows the progress of a command on stderr, in bytes of
// input (decimal units, as the summaries): on a terminal one line redrawn
// in place, with a bar when the terminal is wide enough; off a terminal
// (--progress always) a plain line every 5 s. Updates come from worker
// goroutines; one goroutine renders.
type progressReporter struct {
	done, total atomic.Int64
	quit        chan struct{}
	wg          sync.WaitGroup
	w           io.Writer
	cmd, label  string
	term        bool
	width       int // terminal columns; 0 off a terminal
	start       time.Time
	mu          sync.Mutex // serializes writes to w
	drawn       bool       // a line was drawn in place (term) and must be ended; guarded by mu
}

// printLine writes line to the display's writer as a line of its own,
// clearing and later redrawing a line drawn in place. Safe for concurrent
// use.
func (r *progressReporter) printLine(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.drawn {
		fmt.Fprint(r.w, "\r\x1b[K")
		r.drawn = false
	}
	fmt.Fprintln(r.w, line)
}

// minBarWidth is the narrowest terminal that gets a bar; a narrower one
// gets the plain line, cut to fit.
const minBarWidth = 80

// terminalWidth reports whether w is a terminal, and its width in columns
// (80 when it cannot be told).
func terminalWidth(w io.Writer) (int, bool) {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0, false
	}
	cols, _, err := term.GetSize(int(f.Fd()))
	if err != nil || cols <= 0 {
		cols = 80
	}
	return cols, true
}

// startProgress starts showing progress on w in the given mode (auto,
// always or never), labelled label ("converting") on a terminal and
// "qconv CMD:" on plain lines.
func startProgress(mode string, w io.Writer, cmd, label string) *progressReporter {
	r := &progressReporter{quit: make(chan struct{}), w: w, cmd: cmd, label: label, start: time.Now()}
	r.width, r.term = terminalWidth(w)
	if mode == "never" || (mode == "auto" && !r.term) {
		return r
	}
	interval := 5 * time.Second
	if r.term {
		interval = 200 * time.Millisecond
	}
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
			r.draw(time.Since(r.start))
		}
	}()
	return r
}

// logWriter returns a writer for a package's notes to the user (its
// Options.Log): each line becomes "qconv CMD: line" (a "qconv: " the
// package put there itself is replaced), written with printLine so that
// it never lands inside a line drawn in place. Safe for concurrent use.
func (r *progressReporter) logWriter() io.Writer {
	return &lineWriter{line: func(l string) {
		r.printLine("qconv " + r.cmd + ": " + strings.TrimPrefix(l, "qconv: "))
	}}
}

// lineWriter calls line with each complete line written to it.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	line func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.line(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// draw renders the current state once.
func (r *progressReporter) draw(elapsed time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	done, total := r.done.Load(), r.total.Load()
	if total <= 0 {
		return
	}
	if !r.term {
		fmt.Fprintf(r.w, "qconv %s: %s\n", r.cmd, progressText(done, total, elapsed))
		return
	}
	line := r.label + " " + progressText(done, total, elapsed)
	if r.width >= minBarWidth {
		line = progressBar(r.label, done, total, elapsed, r.width-1)
	} else if len(line) > r.width-1 {
		line = line[:max(r.width-1, 0)]
	}
	fmt.Fprintf(r.w, "\r%s\x1b[K", line)
	r.drawn = true
}

// progressText is "1.23 GB / 2.95 GB (41%), 812 MB/s, ETA 2s".
func progressText(done, total int64, elapsed time.Duration) string {
	return fmt.Sprintf("%s / %s (%.0f%%), %s", humanBytes(done), humanBytes(total), percent(done, total), rateETA(done, total, elapsed))
}

// rateETA is "812 MB/s, ETA 2s".
func rateETA(done, total int64, elapsed time.Duration) string {
	secs := elapsed.Seconds()
	rate, eta := 0.0, "?"
	if secs > 0 {
		rate = float64(done) / 1e6 / secs
	}
	if done > 0 && done <= total {
		eta = (time.Duration(float64(total-done) / float64(done) * secs * float64(time.Second))).Round(time.Second).String()
	}
	return fmt.Sprintf("%.0f MB/s, ETA %s", rate, eta)
}

func percent(done, total int64) float64 {
	return 100 * float64(min(done, total)) / float64(total)
}

// progressBar is "converting  41% [=====>      ] 1.23 GB / 2.95 GB, 812
// MB/s, ETA 2s", the bar filling what width leaves.
func progressBar(label string, done, total int64, elapsed time.Duration, width int) string {
	head := fmt.Sprintf("%s %3.0f%% [", label, percent(done, total))
	tail := fmt.Sprintf("] %s / %s, %s", humanBytes(done), humanBytes(total), rateETA(done, total, elapsed))
	n := width - len(head) - len(tail)
	if n < 10 {
		line := label + " " + progressText(done, total, elapsed)
		return line[:min(len(line), width)]
	}
	fill := int(float64(n) * float64(min(done, total)) / float64(total))
	bar := strings.Repeat("=", fill)
	if fill < n {
		bar += ">" + strings.Repeat(" ", n-fill-1)
	}
	return head + bar + tail
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

// stop stops the display; on success a terminal's line shows 100%.
func (r *progressReporter) stop(ok bool) {
	close(r.quit)
	r.wg.Wait()
	r.mu.Lock()
	drawn := r.drawn
	r.mu.Unlock()
	if drawn {
		if ok {
			r.done.Store(r.total.Load())
			r.draw(time.Since(r.start))
		}
		fmt.Fprintln(r.w) // end the line drawn in place
	}
}
