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
// verify), 2 usage error or unreadable or invalid input.
//
// This file holds the command table and the top-level runner; each command
// lives in its own file, and the work is done in the packages under
// formats/, convert/ and audit/.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// Exit codes shared by every command.
const (
	exitOK       = 0 // success
	exitFindings = 1 // the command ran and found problems (audit, verify)
	exitError    = 2 // usage error, or unreadable or invalid input
)

// A command is one qconv subcommand.
type command struct {
	name    string // as typed: "inspect"
	summary string // one line for "qconv help"
	// run executes the command with the arguments after its name and
	// returns the exit code. It handles "--help" itself (see parseFlags).
	run func(args []string, stdout, stderr io.Writer) int
}

// commands returns the command table, in the order "qconv help" lists it.
// To add a command, write <name>.go with a func returning *command and add
// one line here.
func commands() []*command {
	return []*command{
		convertCommand(),
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
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs qconv with args (without the program name) and returns the exit
// code. A panic is reported as a one-line internal error with exit code 2.
func run(args []string, stdout, stderr io.Writer) int {
	return dispatch(commands(), args, stdout, stderr)
}

// dispatch runs the command of cmds named by args[0].
func dispatch(cmds []*command, args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "qconv: internal error: %v\n", r)
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
			fmt.Fprintln(stderr, "qconv: usage: qconv help [command]")
			return exitError
		}
		c := lookup(cmds, args[1])
		if c == nil {
			fmt.Fprintf(stderr, "qconv: unknown command %q; run 'qconv help' for a list\n", args[1])
			return exitError
		}
		return c.run([]string{"--help"}, stdout, stderr)
	case "-version", "--version":
		args = []string{"version"}
	}
	c := lookup(cmds, args[0])
	if c == nil {
		if strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "qconv: flag %s before the command; usage: qconv <command> [flags] ARGS\n", args[0])
		} else {
			fmt.Fprintf(stderr, "qconv: unknown command %q; run 'qconv help' for a list\n", args[0])
		}
		return exitError
	}
	return c.run(args[1:], stdout, stderr)
}

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
	fmt.Fprint(w, `
Flags may come before or after arguments; "--" ends the flags.
Exit codes: 0 success, 1 findings (audit, verify), 2 usage error or invalid input.
`)
}
