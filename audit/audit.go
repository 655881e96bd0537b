// Package audit is qconv's checkpoint linter: it looks at safetensors
// checkpoints (a file, a directory with model.safetensors, or a directory
// with model.safetensors.index.json and shards) and reports what would
// break a load or waste memory, as Diagnostics with stable rule IDs.
//
// The package holds the framework: the [Rule] and [Pass] types, the lenient
// [Checkpoint] view the rules look at, the driver ([Run]) that runs rules
// and sorts and de-duplicates their findings, the output formats (text,
// JSON, SARIF 2.1.0, GitHub workflow annotations) and the one safe repair,
// [Fix]. The rules themselves live in audit/rules, one rule per file.
//
// By default an audit reads only headers and the small quant-state tensors,
// so a 100 GB checkpoint audits in milliseconds; rules marked Deep read
// tensor data and run only when [Options.Deep] is set.
//
// audit is NOT a validator to use before loading a file (formats/safetensors
// already refuses malformed files), and it never modifies its input: Fix
// writes a repaired copy to a new directory.
package audit

import (
	"fmt"
	"strings"
)

// Severity is how bad a finding is. The zero value is not a valid
// severity; the valid ones are ordered Info < Warning < Error.
type Severity int8

// The severities, in increasing order.
const (
	Info    Severity = iota + 1 // worth knowing; nothing breaks
	Warning                     // wastes memory or breaks some loaders
	Error                       // breaks loading or silently corrupts weights
)

// String returns "info", "warning" or "error".
func (s Severity) String() string {
	switch s {
	case Info:
		return "info"
	case Warning:
		return "warning"
	case Error:
		return "error"
	}
	return fmt.Sprintf("Severity(%d)", int(s))
}

// ParseSeverity parses "info", "warning" or "error" (case-insensitive).
func ParseSeverity(s string) (Severity, bool) {
	switch strings.ToLower(s) {
	case "info":
		return Info, true
	case "warning":
		return Warning, true
	case "error":
		return Error, true
	}
	return 0, false
}

// Diagnostic is one finding.
type Diagnostic struct {
	Rule     string   // rule ID, such as "BNB001"
	Severity Severity // the rule's severity
	File     string   // the file the finding is about, as a path
	Tensor   string   // the tensor it is about, or "" if none
	Message  string   // what is wrong and how to fix it, one sentence or two
}

// Counts is the number of findings per severity.
type Counts struct {
	Error   int `json:"error"`
	Warning int `json:"warning"`
	Info    int `json:"info"`
}

// AtLeast returns the number of findings of severity s or worse.
func (c Counts) AtLeast(s Severity) int {
	n := 0
	if s <= Error {
		n += c.Error
	}
	if s <= Warning {
		n += c.Warning
	}
	if s <= Info {
		n += c.Info
	}
	return n
}

func (c *Counts) add(s Severity) {
	switch s {
	case Error:
		c.Error++
	case Warning:
		c.Warning++
	case Info:
		c.Info++
	}
}

// Rule is one check. Rules are values: the driver runs Run once per
// checkpoint with a [Pass]; Doc is the text of `qconv audit --explain ID`,
// the SARIF rule documentation and docs/audit-rules.md.
type Rule struct {
	// ID is stable and never reused: a prefix naming the group (ST
	// structure, IX sharded index, BNB 4-bit quantization, ARCH what the
	// architecture quantizes, CFG config.json, NAME tensor names, DEEP data
	// checks) and three digits.
	ID string
	// Title is one line, lower case, without a final period.
	Title string
	// Doc explains what the rule checks, why it matters and how to fix a
	// finding, in plain-text paragraphs separated by blank lines.
	Doc string
	// Severity is the severity of every finding the rule reports.
	Severity Severity
	// Deep marks rules that read tensor data; they run only with
	// Options.Deep.
	Deep bool
	// Run inspects pass.Checkpoint and reports findings through pass.
	// It must not print, must not modify the checkpoint, and must treat
	// everything in the files as untrusted.
	Run func(pass *Pass)
}

// Pass is what a rule's Run gets: the checkpoint to inspect and a way to
// report findings.
type Pass struct {
	Rule       *Rule
	Checkpoint *Checkpoint
	report     func(Diagnostic)
}

// Reportf records a finding of the pass's rule about file and tensor
// (either may be ""), with a message formatted as by fmt.Sprintf.
func (p *Pass) Reportf(file, tensor, format string, args ...any) {
	p.report(Diagnostic{
		Rule:     p.Rule.ID,
		Severity: p.Rule.Severity,
		File:     file,
		Tensor:   tensor,
		Message:  fmt.Sprintf(format, args...),
	})
}
