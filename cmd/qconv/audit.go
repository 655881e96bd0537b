package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/audit/rules"
)

const auditUsage = `
usage: qconv audit [flags] PATH...
       qconv audit --changed-files [flags] FILE...
       qconv audit --fix DST PATH
       qconv audit --list-rules | --explain ID

Check checkpoints for what breaks a load or wastes memory, before they are
uploaded or served. PATH is a .safetensors file, or a directory holding
model.safetensors or model.safetensors.index.json and its shards (with
config.json beside them). Each finding names a rule ID, a severity (error,
warning, info), the file, the tensor, and says what is wrong and how to
fix it. Malformed files are findings, not failures. A file PATH is
audited alone; config.json and the index are read for a directory PATH.

--changed-files takes the files a commit touches, as a pre-commit hook
passes them: each .safetensors file, *.safetensors.index.json, config.json
or adapter_config.json stands for its directory, and each directory that
holds a checkpoint is audited once, as a directory PATH. Other files, and
config.json files of directories without one, are ignored.

By default only headers, config.json, the index and the small quant-state
tensors are read, so a 100 GB checkpoint audits in milliseconds; --deep
also reads tensor data (NaN/Inf, all-zero and constant tensors, absmax).

--fix DST writes a repaired copy of PATH to the new directory DST (never
in place): packed 4-bit weights stored as F32/BF16/F16 become U8
[nbytes, 1] holding the same bytes, and bnb_4bit_quant_storage becomes
"uint8". The copy is then audited like any PATH.

Exit codes: 0 no finding at or above --fail-on; 1 findings; 2 usage error,
a PATH that does not exist or holds no checkpoint, or a failed --fix.
`

func auditCommand() *command {
	return &command{
		name:    "audit",
		summary: "check checkpoints for loading problems and wasted memory (stable rule IDs)",
		run:     runAudit,
	}
}

func runAudit(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit")
	format := fs.String("format", "text", "output `format`: text, json, sarif, github or gitlab (Code Quality)")
	failOn := fs.String("fail-on", "error", "exit 1 if a finding of this `severity` or worse exists: error, warning, info or never")
	deep := fs.Bool("deep", false, "also read tensor data (DEEP rules)")
	var disable []string
	fs.Func("disable", "comma-separated rule `IDs` not to run (repeatable)", func(s string) error {
		for _, id := range strings.Split(s, ",") {
			if id = strings.TrimSpace(id); id != "" {
				disable = append(disable, id)
			}
		}
		return nil
	})
	listRules := fs.Bool("list-rules", false, "list the rules and exit")
	explain := fs.String("explain", "", "print the documentation of rule `ID` and exit")
	fixDst := fs.String("fix", "", "write a repaired copy of PATH to the new directory `DST`, then audit it")
	changed := fs.Bool("changed-files", false, "audit the checkpoint directory of each FILE once (for pre-commit)")
	pos, code, ok := parseFlags(fs, auditUsage, args, stdout, stderr)
	if !ok {
		return code
	}
	all := rules.All()
	tool := audit.Tool{Name: "qconv", Version: version}

	if *explain != "" {
		r := audit.FindRule(all, *explain)
		if r == nil {
			return usageError(stderr, "audit", "unknown rule %q (see qconv audit --list-rules)", *explain)
		}
		fmt.Fprint(stdout, audit.Explain(r))
		return exitOK
	}
	if *listRules {
		return writeRuleList(stdout, stderr, all, *format)
	}

	threshold, never := audit.Severity(0), false
	if *failOn == "never" {
		never = true
	} else if s, ok := audit.ParseSeverity(*failOn); ok {
		threshold = s
	} else {
		return usageError(stderr, "audit", "--fail-on %q: want error, warning, info or never", *failOn)
	}
	formatter, err := audit.NewFormatter(*format, tool)
	if err != nil {
		return usageError(stderr, "audit", "--format %q: want text, json, sarif, github or gitlab", *format)
	}
	for _, id := range disable {
		if audit.FindRule(all, id) == nil {
			return usageError(stderr, "audit", "--disable: unknown rule %q (see qconv audit --list-rules)", id)
		}
	}
	if *changed {
		if *fixDst != "" {
			return usageError(stderr, "audit", "--fix and --changed-files do not go together")
		}
		pos, _ = audit.CheckpointDirs(pos) // none left: nothing to audit, exit 0
	} else if len(pos) == 0 {
		return usageError(stderr, "audit", "expected at least one PATH")
	}

	if *fixDst != "" {
		if len(pos) != 1 {
			return usageError(stderr, "audit", "--fix takes exactly one PATH, got %d", len(pos))
		}
		res, err := audit.Fix(*fixDst, pos[0])
		if errors.Is(err, audit.ErrNothingToFix) {
			fmt.Fprintf(stderr, "qconv audit: nothing to fix in %s (no packed weight in a float storage dtype, storage already uint8); nothing written\n", pos[0])
			return exitOK
		}
		if err != nil {
			printError(stderr, err)
			return exitError
		}
		reportFix(stderr, res, *fixDst)
		pos = []string{*fixDst}
	}

	rep, err := audit.Run(pos, audit.Options{Rules: all, Disable: disable, Deep: *deep})
	if err != nil {
		return usageError(stderr, "audit", "%v", err)
	}
	if err := formatter.Format(stdout, rep); err != nil {
		printError(stderr, err)
		return exitError
	}
	if *format == "text" {
		fmt.Fprintf(stderr, "qconv audit: %s, %s, %s\n",
			countWord(rep.Counts.Error, "error"), countWord(rep.Counts.Warning, "warning"), countWord(rep.Counts.Info, "info finding"))
	}
	for _, e := range rep.PathErrors {
		printError(stderr, e)
	}
	switch {
	case len(rep.PathErrors) > 0:
		return exitError
	case !never && rep.Counts.AtLeast(threshold) > 0:
		return exitFindings
	}
	return exitOK
}

func countWord(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func reportFix(w io.Writer, res *audit.FixResult, dst string) {
	fmt.Fprintf(w, "qconv audit: wrote %s\n", dst)
	for _, r := range res.Retyped {
		fmt.Fprintf(w, "  retyped %s\n", r)
	}
	if res.ConfigStorage != "" {
		fmt.Fprintf(w, "  config.json: bnb_4bit_quant_storage %q -> \"uint8\"\n", res.ConfigStorage)
		if res.ConfigReformatted {
			fmt.Fprintln(w, "  config.json was not in transformers' layout; it was rewritten as json.dumps(indent=2, sort_keys=True)")
		}
	}
	for _, s := range res.Skipped {
		fmt.Fprintf(w, "  skipped %s (not a regular file)\n", s)
	}
}

type jsonRule struct {
	ID       string `json:"id"`
	Severity string `json:"severity"`
	Deep     bool   `json:"deep"`
	Title    string `json:"title"`
	Doc      string `json:"doc"`
}

func writeRuleList(stdout, stderr io.Writer, all []*audit.Rule, format string) int {
	switch format {
	case "text":
		tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
		for _, r := range all {
			deep := ""
			if r.Deep {
				deep = "deep"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.ID, r.Severity, deep, r.Title)
		}
		tw.Flush()
	case "json":
		out := make([]jsonRule, len(all))
		for i, r := range all {
			out[i] = jsonRule{ID: r.ID, Severity: r.Severity.String(), Deep: r.Deep, Title: r.Title, Doc: audit.Unwrap(r.Doc)}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			printError(stderr, err)
			return exitError
		}
	default:
		return usageError(stderr, "audit", "--list-rules supports --format text or json, not %q", format)
	}
	return exitOK
}
