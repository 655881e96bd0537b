// Command qconv converts safetensors checkpoints to bitsandbytes 4-bit
// checkpoints byte-identical to what bitsandbytes and transformers write,
// and inspects and audits checkpoints.
//
// Usage:
//
//	qconv <command> [flags] ARGS
//	qconv help [command]
//
// Flags may come before or after the positional arguments; "--" ends the
// flags. Exit codes, for every command: 0 success, 1 findings (audit,
// verify), 2 usage error or unreadable or invalid input, 130 after SIGINT
// and 143 after SIGTERM.
//
// This file holds the command table and the top-level runner; each command
// lives in its own file, and the work is done in the packages under
// formats/, convert/ and audit/.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"

	"github.com/qconv/qconv/internal/procs"
)

// Exit codes shared by every command.
const (
	exitOK       = 0   // success
	exitFindings = 1   // the command ran and found problems (audit, verify)
	exitError    = 2   // usage error, or unreadable or invalid input
	exitSIGINT   = 130 // stopped by SIGINT (Ctrl-C), after cleaning up: 128 + 2, as shells report it
	exitSIGTERM  = 143 // stopped by SIGTERM, after cleaning up: 128 + 15
)

// A command is one qconv subcommand.
type command struct {
	name    string // as typed: "inspect"
	summary string // one line for "qconv help"
	// runCtx executes the command with the arguments after its name and
	// returns the exit code; ctx is cancelled on SIGINT or SIGTERM, and
	// long-running work must stop and clean up when it is. It handles
	// "--help" itself (see parseFlags).
	runCtx func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	// run is runCtx for commands that finish quickly and ignore ctx; a
	// command sets one of the two.
	run func(args []string, stdout, stderr io.Writer) int
}

// call runs c.
func (c *command) call(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if c.runCtx != nil {
		return c.runCtx(ctx, args, stdout, stderr)
	}
	return c.run(args, stdout, stderr)
}

// commands returns the command table, in the order "qconv help" lists it.
// To add a command, write <name>.go with a func returning *command and add
// one line here.
func commands() []*command {
	return []*command{
		convertCommand(),
		mergeCommand(),
		inspectCommand(),
		auditCommand(),
		dequantCommand(),
		verifyCommand(),
		versionCommand(),
	}
}

func lookup(cmds []*command, name string) *command {
	for _, c := range cmds {
		if c.name == name {
			return c
		}
	}
	return nil
}

func main() {
	procs.Raise() // spare Ps for goroutines woken while workers are in system calls
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	os.Exit(runSignals(commands(), os.Args[1:], os.Stdout, os.Stderr, sigs, func() { signal.Stop(sigs) }))
}

// run runs qconv with args (without the program name) and returns the exit
// code, with no signal handling (tests).
func run(args []string, stdout, stderr io.Writer) int {
	return dispatch(context.Background(), commands(), args, stdout, stderr)
}

// runSignals runs the command of cmds that args name. The first signal from sigs (SIGINT or
// SIGTERM) cancels the command's context; once the command has cleaned up
// and returned, the exit code is 130 for SIGINT and 143 for SIGTERM
// whatever the command returned. stopSignals is called on the first
// signal, so that a second one stops the process at once.
func runSignals(cmds []*command, args []string, stdout, stderr io.Writer, sigs <-chan os.Signal, stopSignals func()) int {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got atomic.Value // os.Signal
	finished := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case s := <-sigs:
			got.Store(s)
			stopSignals()
			fmt.Fprintf(stderr, "\nqconv: %s: stopping and cleaning up (send it again to stop at once)\n", signalName(s))
			cancel()
		case <-finished:
		}
	}()
	code := dispatch(ctx, cmds, args, stdout, stderr)
	close(finished)
	<-watched
	if s, ok := got.Load().(os.Signal); ok {
		return signalExit(s)
	}
	return code
}

// signalExit is the exit code after signal s: 128 + its number.
func signalExit(s os.Signal) int {
	if s == syscall.SIGTERM {
		return exitSIGTERM
	}
	return exitSIGINT
}

func signalName(s os.Signal) string {
	if s == syscall.SIGTERM {
		return "SIGTERM"
	}
	return "SIGINT"
}

// dispatch runs the command of cmds named by args[0]. A panic is reported
// as a one-line internal error with exit code 2.
func dispatch(ctx context.Context, cmds []*command, args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "qconv: internal error: %v; please report this as a qconv bug\n", r)
			code = exitError
		}
	}()
	if len(args) == 0 {
		printUsage(stderr, cmds)
		return exitError
	}
	switch name := args[0]; name {
	case "help", "-h", "-help", "--help":
		if len(args) == 1 || name != "help" {
			printUsage(stdout, cmds)
			return exitOK
		}
		if len(args) > 2 {
			fmt.Fprintln(stderr, "qconv help: usage: qconv help [command]")
			return exitError
		}
		if args[1] == "help" {
			fmt.Fprint(stdout, strings.TrimSpace(helpUsage)+"\n")
			return exitOK
		}
		c := lookup(cmds, args[1])
		if c == nil {
			fmt.Fprintf(stderr, "qconv help: %s\n", unknownCommand(cmds, args[1]))
			return exitError
		}
		return c.call(ctx, []string{"--help"}, stdout, stderr)
	case "-version", "--version":
		args = []string{"version"}
	}
	c := lookup(cmds, args[0])
	if c == nil {
		if strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "qconv: flag %s before the command; usage: qconv <command> [flags] ARGS\n", args[0])
		} else {
			fmt.Fprintf(stderr, "qconv: %s\n", unknownCommand(cmds, args[0]))
		}
		return exitError
	}
	return c.call(ctx, args[1:], stdout, stderr)
}

// unknownCommand says that name is no command, with a "did you mean" for
// a near miss.
func unknownCommand(cmds []*command, name string) string {
	names := []string{"help"}
	for _, c := range cmds {
		names = append(names, c.name)
	}
	msg := fmt.Sprintf("unknown command %q", name)
	if s := suggest(name, names); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return msg + " (run 'qconv help' for a list)"
}

const helpUsage = `
usage: qconv help [command]

Without a command, list the commands; with one, print its usage and flags
(as 'qconv CMD --help' does).
`

func printUsage(w io.Writer, cmds []*command) {
	fmt.Fprint(w, `qconv converts safetensors checkpoints to bitsandbytes 4-bit (NF4/FP4) checkpoints
byte-identical to what bitsandbytes and transformers write, and inspects and audits them.

Usage:
  qconv <command> [flags] ARGS
  qconv help <command>

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	for _, c := range cmds {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, cliContract)
}

// cliContract is the part of "qconv help" that every command keeps; the
// README's "CLI contract" section says the same.
const cliContract = `
Flags may come before or after arguments and are written --name (or -j);
"--" ends the flags. -j N is the number of workers in every command that
has it; 0 (the default) means all CPUs.

Exit codes:
  0    success
  1    findings (audit: a finding at or above --fail-on; verify: a tensor failed)
  2    usage error, or unreadable or invalid input
  130  stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM, after cleaning up

Errors are one line on stderr: "qconv CMD: FILE: TENSOR: problem; what to do".
A broken safetensors file is named with the audit rule ID (ST002, ...);
'qconv audit --explain ID' says more. Progress (--progress) and sizes are
in decimal units (kB, MB, GB) and count each input byte once.
`
