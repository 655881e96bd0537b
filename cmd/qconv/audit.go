package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/audit/rules"
)

const auditUsage = `
usage: qconv audit [flags] PATH...
       qconv audit --changed-files [flags] FILE...
       qconv audit --fix DST [--force] PATH
       qconv audit --list-rules | --explain ID...

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
also reads tensor data (NaN/Inf, all-zero and constant tensors, absmax),
with --progress as convert.

--select and --disable take rule IDs and ID prefixes, comma-separated or
repeated, as ruff and staticcheck do: --select BNB,CFG001 runs the BNB
rules and CFG001; --disable NAME leaves out the NAME rules. --explain takes
one or more IDs or prefixes (--explain ST002 BNB001, --explain DEEP).

--fix DST writes a repaired copy of PATH to the directory DST (never in
place): packed 4-bit weights stored as F32/BF16/F16 become U8 [nbytes, 1]
holding the same bytes, and bnb_4bit_quant_storage becomes "uint8". DST is
written also when nothing needs repairing (an unchanged copy), so that the
next step of a pipeline finds it; unchanged files are hard links to PATH's
where the file system allows (replace them, do not edit them in place).
An existing DST is refused unless --force. The copy is then audited like
any PATH.

Output: --format text writes one finding a line on stdout and a summary
line on stderr (-q leaves the summary out); json adds "errors" for paths
that could not be audited; sarif (SARIF 2.1.0, for GitHub code scanning)
reports them in invocations[0] (executionSuccessful false,
toolExecutionNotifications); github writes workflow annotations; gitlab
writes a GitLab Code Quality report (artifacts:reports:codequality).

Exit codes: 0 no finding at or above --fail-on; 1 findings; 2 usage error,
a PATH that does not exist or holds no checkpoint, or a failed --fix
(whatever the findings); 130/143 interrupted by SIGINT/SIGTERM.
`

func auditCommand() *command {
	return &command{
		name:    "audit",
		summary: "check checkpoints for loading problems and wasted memory (stable rule IDs)",
		runCtx:  runAudit,
	}
}

// idList is a repeatable flag of comma-separated rule IDs or prefixes.
type idList []string

func (l *idList) String() string { return strings.Join(*l, ",") }
func (l *idList) Set(s string) error {
	for _, id := range strings.Split(s, ",") {
		if id = strings.TrimSpace(id); id != "" {
			*l = append(*l, id)
		}
	}
	return nil
}

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("audit")
	format := fs.String("format", "text", "output `format`: text, json, sarif, github or gitlab (Code Quality)")
	failOn := fs.String("fail-on", "error", "exit 1 if a finding of this `severity` or worse exists: error, warning, info or never")
	deep := fs.Bool("deep", false, "also read tensor data (DEEP rules)")
	var selectIDs, disable, explain idList
	fs.Var(&selectIDs, "select", "run only the rules of these comma-separated `IDs` or ID prefixes (repeatable; default: all)")
	fs.Var(&disable, "disable", "do not run the rules of these comma-separated `IDs` or ID prefixes (repeatable)")
	listRules := fs.Bool("list-rules", false, "list the rules and exit")
	fs.Var(&explain, "explain", "print the documentation of the rules `ID` (IDs or prefixes; more may follow as arguments) and exit")
	base := fs.String("base", "", "check PEFT adapter PATHs against this base model (`BASE`: a checkpoint, dense or 4-bit): modules, shapes, target_modules, base_model_name_or_path (LORA rules)")
	fixDst := fs.String("fix", "", "write a repaired (or, with nothing to repair, unchanged) copy of PATH to the directory `DST`, then audit it")
	force := fs.Bool("force", false, "with --fix: replace an existing DST")
	changed := fs.Bool("changed-files", false, "audit the checkpoint directory of each FILE once (for pre-commit)")
	quiet := fs.Bool("q", false, "quiet: no summary line on stderr")
	progress := progressFlag(fs)
	pos, code, ok := parseFlags(fs, auditUsage, args, stdout, stderr)
	if !ok {
		return code
	}
	all := rules.All()
	tool := audit.Tool{Name: "qconv", Version: version}

	if len(explain) > 0 {
		var ids idList
		for _, a := range append(slices.Clone(explain), pos...) {
			ids.Set(a)
		}
		rs, err := audit.MatchRules(all, ids)
		if err != nil {
			return usageError(stderr, "audit", "--explain: %s (see qconv audit --list-rules)", errorLine(err))
		}
		for i, r := range rs {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			fmt.Fprint(stdout, audit.Explain(r))
		}
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
	if code, ok := checkProgress("audit", *progress, stderr); !ok {
		return code
	}
	for _, f := range []struct {
		name string
		ids  []string
	}{{"--select", selectIDs}, {"--disable", disable}} {
		if _, err := audit.MatchRules(all, f.ids); err != nil {
			return usageError(stderr, "audit", "%s: %s (see qconv audit --list-rules)", f.name, errorLine(err))
		}
	}
	if len(selectIDs) > 0 && !*deep {
		sel, _ := audit.MatchRules(all, selectIDs)
		if !slices.ContainsFunc(sel, func(r *audit.Rule) bool { return !r.Deep }) {
			return usageError(stderr, "audit", "--select %s: only deep rules, which run with --deep; add --deep", selectIDs.String())
		}
	}
	if *force && *fixDst == "" {
		return usageError(stderr, "audit", "--force goes with --fix DST")
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
		res, err := audit.FixWith(*fixDst, pos[0], audit.FixOptions{Force: *force})
		if err != nil {
			printError(stderr, "audit", err)
			return exitError
		}
		reportFix(stderr, res, pos[0], *fixDst)
		pos = []string{*fixDst}
	}

	var rep *audit.Report
	opts := audit.Options{Rules: all, Select: selectIDs, Disable: disable, Deep: *deep, Base: *base}
	err = withProgress(*progress, "audit", "auditing", stderr, func(pr *progressReporter) (err error) {
		opts.Progress = pr.update
		rep, err = audit.RunContext(ctx, pos, opts)
		return err
	})
	if err != nil {
		printError(stderr, "audit", err)
		return exitError
	}
	if err := formatter.Format(stdout, rep); err != nil {
		printError(stderr, "audit", err)
		return exitError
	}
	for _, e := range rep.PathErrors {
		printError(stderr, "audit", e)
	}
	if *format == "text" && !*quiet {
		summary := fmt.Sprintf("%s, %s, %s", countWord(rep.Counts.Error, "error"), countWord(rep.Counts.Warning, "warning"), countWord(rep.Counts.Info, "info finding"))
		if n := len(rep.PathErrors); n > 0 {
			summary += fmt.Sprintf("; %s could not be audited, so the audit is incomplete", countWord(n, "path"))
		}
		fmt.Fprintf(stderr, "qconv audit: %s\n", summary)
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

func reportFix(w io.Writer, res *audit.FixResult, src, dst string) {
	if res.Unchanged {
		fmt.Fprintf(w, "qconv audit: nothing to fix in %s (no packed weight in a float storage dtype, storage already uint8); wrote an unchanged copy to %s\n", src, dst)
	} else {
		fmt.Fprintf(w, "qconv audit: wrote %s\n", dst)
	}
	for _, r := range res.Retyped {
		fmt.Fprintf(w, "  retyped %s\n", r)
	}
	if res.ConfigStorage != "" {
		fmt.Fprintf(w, "  config.json: bnb_4bit_quant_storage %q -> \"uint8\"\n", res.ConfigStorage)
		if res.ConfigReformatted {
			fmt.Fprintln(w, "  config.json was not in transformers' layout; it was rewritten as json.dumps(indent=2, sort_keys=True)")
		}
	}
	if n := len(res.Linked); n > 0 {
		fmt.Fprintf(w, "  %s hard-linked to %s's (replace, do not edit in place)\n", countWord(n, "unchanged file"), src)
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
			printError(stderr, "audit", err)
			return exitError
		}
	default:
		return usageError(stderr, "audit", "--list-rules supports --format text or json, not %q", format)
	}
	return exitOK
}
