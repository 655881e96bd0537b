package audit

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"github.com/qconv/qconv/internal/editdist"
)

// Options configure [Run]. The zero value runs no rules; pass
// rules.All() as Rules.
type Options struct {
	// Rules are the rules to run.
	Rules []*Rule
	// Select, if not empty, runs only the rules it matches; Disable then
	// leaves out the rules it matches. Each entry is a rule ID ("BNB001")
	// or an ID prefix ("BNB", "ST01"), case-insensitive, as ruff and
	// staticcheck take them; an entry that matches no rule of Rules is an
	// error.
	Select, Disable []string
	// Deep also runs the rules that read tensor data (Rule.Deep). Without
	// it an audit reads only headers and quant-state tensors.
	Deep bool
	// Progress, if not nil, is called as the deep rules read tensor data,
	// with done growing to total, the bytes of the tensors of every path.
	// Each byte counts once, when a deep rule first reads it, however many
	// rules read it.
	Progress func(done, total int64)
	// Base is the base model (a checkpoint path, dense or 4-bit) that the
	// LORA rules check PEFT adapter paths against; "" skips those checks.
	// It applies to adapter paths only.
	Base string
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
	// PathErrors are the arguments that could not be audited at all, as
	// *PathError values: a path that does not exist, or a directory with
	// no .safetensors file and no index (wrapping ErrNothingToAudit).
	// Malformed files are findings, not PathErrors.
	PathErrors []error
}

// MatchRules returns the rules of rules that patterns match (IDs or ID
// prefixes, case-insensitive; see Options.Select), in the order of rules.
// A pattern that matches nothing is an error naming it, with the nearest
// ID or group when there is one.
func MatchRules(rules []*Rule, patterns []string) ([]*Rule, error) {
	match := map[string]bool{}
	for _, p := range patterns {
		n := 0
		for _, r := range rules {
			if len(p) > 0 && len(p) <= len(r.ID) && strings.EqualFold(r.ID[:len(p)], p) {
				match[r.ID] = true
				n++
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("audit: no rule ID is or begins with %q%s", p, nearestID(rules, p))
		}
	}
	var out []*Rule
	for _, r := range rules {
		if match[r.ID] {
			out = append(out, r)
		}
	}
	return out, nil
}

// nearestID suggests a rule ID or group prefix near p, as "; did you mean
// ST002?", or returns "".
func nearestID(rules []*Rule, p string) string {
	best, bestD := "", 3
	seen := map[string]bool{}
	for _, r := range rules {
		for _, c := range []string{r.ID, GroupPrefix(r.ID)} {
			if seen[c] {
				continue
			}
			seen[c] = true
			if d := editdist.Distance(strings.ToUpper(p), c); d < bestD {
				best, bestD = c, d
			}
		}
	}
	if best == "" {
		return ""
	}
	return "; did you mean " + best + "?"
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
	{"ARCH", "What the architecture quantizes (transformers' table)"},
	{"CFG", "config.json"},
	{"NAME", "Tensor names"},
	{"LORA", "PEFT LoRA adapters (qconv merge)"},
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
	return RunContext(context.Background(), paths, opts)
}

// RunContext is Run with a context: once ctx is cancelled, the deep rules'
// reads fail, no further rule runs, and RunContext returns ctx.Err()
// (wrapped) and no report.
func RunContext(ctx context.Context, paths []string, opts Options) (*Report, error) {
	selected := opts.Rules
	if len(opts.Select) > 0 {
		var err error
		if selected, err = MatchRules(opts.Rules, opts.Select); err != nil {
			return nil, err
		}
	}
	disabled := map[string]bool{}
	if len(opts.Disable) > 0 {
		off, err := MatchRules(opts.Rules, opts.Disable)
		if err != nil {
			return nil, err
		}
		for _, r := range off {
			disabled[r.ID] = true
		}
	}
	rep := &Report{}
	var deep []*Rule
	for _, r := range selected {
		if disabled[r.ID] || (r.Deep && !opts.Deep) {
			continue
		}
		rep.Rules = append(rep.Rules, r)
		if r.Deep {
			deep = append(deep, r)
		}
	}
	SortRules(rep.Rules)
	seen := map[Diagnostic]bool{}
	add := func(d Diagnostic) {
		if !seen[d] {
			seen[d] = true
			rep.Findings = append(rep.Findings, d)
		}
	}
	var cks []*Checkpoint
	defer func() {
		for _, c := range cks {
			c.Close()
		}
	}()
	m := &meter{ctx: ctx, progress: opts.Progress}
	for _, p := range paths {
		c, err := load(p)
		if err != nil {
			rep.PathErrors = append(rep.PathErrors, err)
			continue
		}
		if c.Adapter {
			c.Base = opts.Base
		}
		cks = append(cks, c)
		if len(deep) > 0 {
			for _, t := range c.Tensors() {
				m.total += t.End - t.Begin
			}
		}
	}
	for _, c := range cks {
		if len(deep) > 0 && (ctx.Done() != nil || opts.Progress != nil) {
			for _, f := range c.Files {
				f.meter = m
			}
		}
		var bytes int64
		for _, t := range c.Tensors() {
			bytes += t.End - t.Begin
		}
		for _, r := range rep.Rules {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("audit: interrupted: %w", err)
			}
			m.startRule(r.Deep)
			for _, d := range RunRules(c, []*Rule{r}) {
				add(d)
			}
		}
		m.endCheckpoint(bytes)
		c.Close()
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("audit: interrupted: %w", err)
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

// meter counts the tensor bytes that deep rules read, for
// Options.Progress, and fails reads once its context is cancelled. Each
// byte of a tensor counts once, when a rule first reads it: the first deep
// rule that scans a tensor moves the progress, and a later rule reading
// the same bytes again (from the page cache, and usually stopping early)
// does not count them twice.
type meter struct {
	ctx      context.Context
	progress func(done, total int64)
	total    int64 // tensor bytes of every checkpoint

	mu       sync.Mutex
	base     int64               // tensor bytes of the checkpoints finished
	counted  int64               // bytes counted in the current checkpoint
	read     map[tensorKey]int64 // per tensor: how far its bytes are counted
	counting bool                // the current rule is deep
}

// startRule starts a rule; only a deep rule's reads count.
func (m *meter) startRule(deep bool) {
	m.mu.Lock()
	m.counting = deep
	m.mu.Unlock()
}

// endCheckpoint ends a checkpoint of the given tensor bytes: whatever its
// rules did not read counts as done too.
func (m *meter) endCheckpoint(bytes int64) {
	m.mu.Lock()
	m.base += bytes
	m.counted = 0
	m.read = nil
	done := m.base
	m.mu.Unlock()
	if m.progress != nil && m.total > 0 {
		m.progress(done, m.total)
	}
}

// count counts a read of n bytes at offset off of t.
func (m *meter) count(t *Tensor, off int64, n int) {
	if m.progress == nil || m.total == 0 || n <= 0 {
		return
	}
	m.mu.Lock()
	if !m.counting {
		m.mu.Unlock()
		return
	}
	if m.read == nil {
		m.read = map[tensorKey]int64{}
	}
	k := tensorKey{t.File, t.Begin}
	end := off + int64(n)
	hw := m.read[k]
	if end > hw {
		m.counted += end - max(hw, off)
		m.read[k] = end
	}
	done := min(m.base+m.counted, m.total)
	m.mu.Unlock()
	m.progress(done, m.total)
}

// tensorKey names a tensor's bytes: its file and where they begin.
type tensorKey struct {
	f     *File
	begin int64
}

// meteredReader is an io.ReaderAt over the bytes of t whose reads a meter
// counts.
type meteredReader struct {
	r io.ReaderAt
	t *Tensor
	m *meter
}

func (r meteredReader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.m.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.ReadAt(p, off)
	r.m.count(r.t, off, n)
	return n, err
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
