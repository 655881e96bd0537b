package arch

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/qconv/qconv/internal/pyjson"
)

// ConfigNames returns config.json's "architectures" (the strings in it, in
// order) and "model_type", the two keys Lookup takes. A nil or malformed
// config gives neither.
func ConfigNames(cfg *pyjson.Value) (architectures []string, modelType string) {
	if a := cfg.Get("architectures"); a.Kind() == pyjson.KindArray {
		for _, v := range a.Items() {
			if s, ok := v.AsString(); ok {
				architectures = append(architectures, s)
			}
		}
	}
	modelType, _ = cfg.Get("model_type").AsString()
	return architectures, modelType
}

// LookupConfig is Lookup of config.json's "architectures" and
// "model_type"; it returns nil for a nil config or an unknown model.
func (t *Table) LookupConfig(cfg *pyjson.Value) *Arch {
	if cfg == nil {
		return nil
	}
	return t.Lookup(ConfigNames(cfg))
}

// String names the architecture as messages do:
// `FalconForCausalLM (model_type "falcon")`.
func (a *Arch) String() string {
	return fmt.Sprintf("%s (model_type %q)", a.Class, a.ModelType)
}

// Module returns the module a checkpoint tensor belongs to: the name
// without its last component ("model.layers.0.mlp.up_proj" for
// "model.layers.0.mlp.up_proj.weight").
func Module(tensor string) string {
	if i := strings.LastIndexByte(tensor, '.'); i >= 0 {
		return tensor[:i]
	}
	return ""
}

// A SkipList is the modules_to_not_convert that transformers gets from
// quantization_config's llm_int8_skip_modules, compiled once. The zero
// value skips nothing.
type SkipList struct {
	patterns []string
	res      []*regexp.Regexp // nil where Go's regexp cannot compile the pattern
}

// NewSkipList compiles patterns, llm_int8_skip_modules' entries.
func NewSkipList(patterns []string) *SkipList {
	l := &SkipList{patterns: patterns, res: make([]*regexp.Regexp, len(patterns))}
	for i, p := range patterns {
		// re.match(p + r"\.", m) or re.match(p, m): a match of the first
		// is one of the second, and Python's re.match anchors the whole
		// pattern (alternatives included) at the start.
		l.res[i], _ = regexp.Compile("^(?:" + p + ")")
	}
	return l
}

// Skips reports whether transformers keeps module dense because of the
// list: transformers 5.17's quantizers_utils.should_convert_module,
// negated. A module is skipped if a pattern, as a Python regular
// expression anchored at the start of the module name, matches it
// followed by a dot or on its own, or if the module name ends with the
// pattern. A pattern that Go's regexp cannot compile (Python-only syntax)
// is taken literally, as a prefix or suffix, as
// scripts/archgen/build_table.py does.
func (l *SkipList) Skips(module string) bool {
	if l == nil {
		return false
	}
	for i, p := range l.patterns {
		if strings.HasSuffix(module, p) {
			return true
		}
		if re := l.res[i]; re != nil {
			if re.MatchString(module) {
				return true
			}
		} else if strings.HasPrefix(module, p) {
			return true
		}
	}
	return false
}

// DefaultSkip reports whether d keeps a Linear dense only because it is
// among transformers' default modules_to_not_convert (the output embedding,
// a weight tied to it, the last module): transformers adds those only when
// quantization_config's llm_int8_skip_modules is null, so with an explicit
// list the module is converted unless the list names it.
func (d Decision) DefaultSkip() bool {
	if d.Action != Keep {
		return false
	}
	switch d.Reason {
	case ReasonOutputEmbedding, ReasonTiedEmbedding, ReasonNotConverted:
		return true
	}
	return false
}
