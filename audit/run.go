package audit

import (
	"fmt"
	"sort"
	"strings"
)

// Options configure [Run]. The zero value runs no rules; pass
// rules.All() as Rules.
type Options struct {
	// Rules are the rules to run.
	Rules []*Rule
	// Disable lists IDs of rules not to run. An ID that is not in Rules
	// is an error.
	Disable []string
	// Deep also runs the rules that read tensor data (Rule.Deep). Without
	// it an audit reads only headers and quant-state tensors.
	Deep bool
}

// Report is the result of an audit.
type Report struct {
	// Findings are sorted by file, tensor, rule and message, without
	// duplicates.
	Findings []Diagnostic
	// Counts counts Findings by severity.
	Counts Counts
	// Rules are the rules that ran, sorted by ID.
	Rules []*Rule
	// PathErrors are the arguments that could not be audited at all: a
	// path that does not exist, or a directory with no .safetensors file
	// and no index (wrapping ErrNothingToAudit). Malformed files are
	// findings, not PathErrors.
	PathErrors []error
}

// FindRule returns the rule with the given ID (case-insensitive), or nil.
func FindRule(rules []*Rule, id string) *Rule {
	for _, r := range rules {
		if strings.EqualFold(r.ID, id) {
			return r
		}
	}
	return nil
}

// SortRules sorts rules by group prefix in the order ST, IX, BNB, CFG,
// NAME, DEEP (other prefixes after, alphabetically), then by ID.
func SortRules(rules []*Rule) {
	sort.SliceStable(rules, func(i, j int) bool {
		gi, gj := groupRank(rules[i].ID), groupRank(rules[j].ID)
		if gi != gj {
			return gi < gj
		}
		return rules[i].ID < rules[j].ID
	})
}

// groups lists the rule ID prefixes, in documentation order, with a title.
var groups = []struct{ Prefix, Title string }{
	{"ST", "Structure of a safetensors file"},
	{"IX", "Sharded checkpoints (model.safetensors.index.json)"},
	{"BNB", "bitsandbytes 4-bit tensors"},
	{"CFG", "config.json"},
	{"NAME", "Tensor names"},
	{"DEEP", "Tensor data (--deep only)"},
}

// GroupPrefix returns the letters of a rule ID ("BNB" for "BNB001").
func GroupPrefix(id string) string {
	return strings.TrimRight(id, "0123456789")
}

// GroupTitle returns the title of the rule group with the given prefix,
// or the prefix itself for an unknown group.
func GroupTitle(prefix string) string {
	for _, g := range groups {
		if g.Prefix == prefix {
			return g.Title
		}
	}
	return prefix
}

func groupRank(id string) int {
	p := GroupPrefix(id)
	for i, g := range groups {
		if g.Prefix == p {
			return i
		}
	}
	return len(groups)
}

// Run audits each path (a .safetensors file, or a directory holding
// model.safetensors or model.safetensors.index.json and its shards) with
// the rules of opts. The error is non-nil only for bad options; problems
// with the paths are in the report.
func Run(paths []string, opts Options) (*Report, error) {
	disabled := map[string]bool{}
	for _, id := range opts.Disable {
		r := FindRule(opts.Rules, id)
		if r == nil {
			return nil, fmt.Errorf("audit: unknown rule %q", id)
		}
		disabled[r.ID] = true
	}
	rep := &Report{}
	for _, r := range opts.Rules {
		if disabled[r.ID] || (r.Deep && !opts.Deep) {
			continue
		}
		rep.Rules = append(rep.Rules, r)
	}
	SortRules(rep.Rules)
	seen := map[Diagnostic]bool{}
	add := func(d Diagnostic) {
		if !seen[d] {
			seen[d] = true
			rep.Findings = append(rep.Findings, d)
		}
	}
	for _, p := range paths {
		c, err := load(p)
		if err != nil {
			rep.PathErrors = append(rep.PathErrors, err)
			continue
		}
		for _, d := range RunRules(c, rep.Rules) {
			add(d)
		}
		c.Close()
	}
	sort.SliceStable(rep.Findings, func(i, j int) bool {
		a, b := rep.Findings[i], rep.Findings[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Tensor != b.Tensor {
			return a.Tensor < b.Tensor
		}
		if a.Rule != b.Rule {
			return a.Rule < b.Rule
		}
		return a.Message < b.Message
	})
	for _, d := range rep.Findings {
		rep.Counts.add(d.Severity)
	}
	return rep, nil
}

// RunRules runs rules on one checkpoint view and returns their findings,
// unsorted. Run uses it; it is exported for tests that build a Checkpoint
// by hand.
func RunRules(c *Checkpoint, rules []*Rule) []Diagnostic {
	var out []Diagnostic
	add := func(d Diagnostic) { out = append(out, d) }
	for _, r := range rules {
		runRule(r, c, add)
	}
	return out
}

// runRule runs one rule; a panic in a rule becomes an error finding
// instead of crashing the audit of every other path.
func runRule(r *Rule, c *Checkpoint, add func(Diagnostic)) {
	defer func() {
		if v := recover(); v != nil {
			add(Diagnostic{
				Rule:     r.ID,
				Severity: Error,
				File:     c.FindingFile(),
				Message:  fmt.Sprintf("internal error in rule %s: %v; the checkpoint may be fine: please report this as a qconv bug", r.ID, v),
			})
		}
	}()
	r.Run(&Pass{Rule: r, Checkpoint: c, report: add})
}
