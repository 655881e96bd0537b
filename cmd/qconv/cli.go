package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

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
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
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
