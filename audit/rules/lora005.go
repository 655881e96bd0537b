package rules

import (
	"regexp"
	"slices"
	"strings"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/convert/merge"
	"github.com/qconv/qconv/formats/checkpoint"
)

func lora005() *audit.Rule {
	return &audit.Rule{
		ID:       "LORA005",
		Title:    "target_modules that name no module of the base model",
		Severity: audit.Warning,
		Doc: `Checked only with --base BASE. An entry of target_modules in
adapter_config.json matches no module of BASE: PEFT matches a name
against each module's full name or its last components (".q_proj"), and a
string target_modules as a regular expression over the full names. PEFT
ignores an entry that matches nothing as long as another one matches, so
a typo ("q-proj") or an adapter made for another architecture silently
trains or loads fewer layers than intended. ("all-linear" is not
checked.)

Fix: correct the names (qconv inspect BASE lists the tensors, whose names
without ".weight" are the modules), or use the base model the adapter was
made for.`,
		Run: func(p *audit.Pass) {
			withAdapterAndBase(p, func(a *merge.Adapter, base *checkpoint.Checkpoint) {
				cfg := a.Config
				modules := baseModules(base)
				path := merge.AdapterConfigName
				if d := loraDir(p.Checkpoint); d != "" {
					path = d + "/" + merge.AdapterConfigName
				}
				if cfg.TargetRegex != "" {
					if cfg.TargetRegex == "all-linear" {
						return
					}
					re, err := regexp.Compile(`^(?:` + cfg.TargetRegex + `)$`)
					if err != nil {
						p.Reportf(path, "", "target_modules %q is not a regular expression qconv can read (%v); check it against %s's module names", cfg.TargetRegex, err, base.Path)
						return
					}
					if !slices.ContainsFunc(modules, re.MatchString) {
						p.Reportf(path, "", "target_modules %q matches no module of %s, so PEFT adapts no layer; correct the expression or use the base the adapter was made for", cfg.TargetRegex, base.Path)
					}
					return
				}
				var missing []string
				for _, t := range cfg.TargetModules {
					if t == "all-linear" {
						continue
					}
					if !slices.ContainsFunc(modules, func(m string) bool { return m == t || strings.HasSuffix(m, "."+t) }) {
						missing = append(missing, t)
					}
				}
				if len(missing) > 0 {
					p.Reportf(path, "", "target_modules %q %s no module of %s (PEFT skips such entries silently); correct the names or use the base the adapter was made for",
						missing, map[bool]string{true: "matches", false: "match"}[len(missing) == 1], base.Path)
				}
			})
		},
	}
}

// baseModules returns the module names of a checkpoint: every proper
// prefix, at a dot, of its tensor names.
func baseModules(ck *checkpoint.Checkpoint) []string {
	seen := map[string]bool{}
	for _, t := range ck.Tensors() {
		name := t.Name
		for i := strings.LastIndexByte(name, '.'); i > 0; i = strings.LastIndexByte(name, '.') {
			name = name[:i]
			if seen[name] {
				break
			}
			seen[name] = true
		}
	}
	ms := make([]string, 0, len(seen))
	for m := range seen {
		ms = append(ms, m)
	}
	slices.Sort(ms)
	return ms
}
