package audit

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// Explain renders a rule's documentation as `qconv audit --explain ID`
// prints it: "ID (severity): title", a blank line, and Doc.
func Explain(r *Rule) string {
	extra := ""
	if r.Deep {
		extra = ", --deep only"
	}
	return fmt.Sprintf("%s (%s%s): %s\n\n%s\n", r.ID, r.Severity, extra, r.Title, strings.TrimSpace(r.Doc))
}

// WriteMarkdown writes the documentation of rules as a Markdown page (the
// repository's docs/audit-rules.md): a summary table, then one section per
// group with each rule's Explain text.
func WriteMarkdown(w io.Writer, rules []*Rule) error {
	bw := bufio.NewWriter(w)
	fmt.Fprint(bw, `# qconv audit rules

<!-- Generated from the rule values in audit/rules by
     go test ./audit/rules -run TestDocs -update; do not edit. -->

`+"`qconv audit PATH...`"+` checks safetensors checkpoints for what breaks a load or
wastes memory. Each finding names one of the rules below. IDs are stable:
a rule's ID is never reused for a different check. `+"`qconv audit --explain ID`"+`
prints a rule's documentation; `+"`--select`"+` and `+"`--disable`"+` take IDs and
ID prefixes (`+"`--disable NAME,CFG008`"+`); rules marked *deep* read tensor
data and run only with `+"`--deep`"+`. Each rule's section has the anchor of
its lower-case ID (`+"`#st002`"+`), the helpUri of the rule in SARIF output.

| ID | Severity | Title |
| --- | --- | --- |
`)
	for _, r := range rules {
		title := r.Title
		if r.Deep {
			title += " *(deep)*"
		}
		fmt.Fprintf(bw, "| [%s](#%s) | %s | %s |\n", r.ID, strings.ToLower(r.ID), r.Severity, mdEscape(title))
	}
	group := ""
	for _, r := range rules {
		if g := GroupPrefix(r.ID); g != group {
			group = g
			fmt.Fprintf(bw, "\n## %s (%s)\n", GroupTitle(g), g)
		}
		extra := ""
		if r.Deep {
			extra = ", deep"
		}
		fmt.Fprintf(bw, "\n### %s\n\n**%s**%s: %s\n\n", r.ID, r.Severity, extra, mdEscape(r.Title))
		fmt.Fprintf(bw, "```text\n%s\n```\n", strings.TrimSpace(r.Doc))
	}
	return bw.Flush()
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "_", `\_`, "*", `\*`).Replace(s)
}
