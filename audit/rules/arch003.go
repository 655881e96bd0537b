package rules

import (
	"fmt"
	"strings"

	"github.com/qconv/qconv/audit"
)

func arch003() *audit.Rule {
	return &audit.Rule{
		ID:       "ARCH003",
		Title:    "architecture or tensors not in transformers' table",
		Severity: audit.Info,
		Doc: `The 4-bit checkpoint's config.json names an architecture
("architectures"[0], or "model_type") that formats/arch's table of what
transformers quantizes does not know, or the table knows the
architecture but not some of its quantized tensors (a layer type the tiny
model the table was generated from did not have). ARCH001 and ARCH002
then do not judge those tensors: nothing is known to be wrong.

The table is generated from transformers 5.17 and bitsandbytes 0.50.2 by
building every architecture transformers offers through its Auto
classes; a newer transformers, a model with custom code
(trust_remote_code) are outside it. A config.json that names neither
"architectures" nor "model_type" gets no finding.

Fix: nothing to fix in the checkpoint. Check that it loads in
transformers; regenerate the table (scripts/archgen) for a newer
transformers.`,
		Run: func(p *audit.Pass) {
			v, ok := checkpointArch(p.Checkpoint)
			if !ok {
				return
			}
			cfg := p.Checkpoint.Config.Path
			if v.a == nil {
				if len(v.classes) == 0 && v.modelType == "" {
					return // a hand-written config.json: nothing to look up
				}
				what := fmt.Sprintf("architecture %s (model_type %q)", strings.Join(v.classes, ", "), v.modelType)
				if len(v.classes) > 0 {
					if e, failed := v.table.Unbuilt(v.classes[0]); failed {
						what += fmt.Sprintf(", which the table's generator could not build (%s)", firstLine(e))
					}
				}
				p.Reportf(cfg, "", "the table of %s does not know config.json's %s, so which tensors transformers quantizes is not checked (ARCH001, ARCH002)", v.transformersName(), what)
				return
			}
			var unknown []string
			for _, g := range packedGroups(p.Checkpoint) {
				if _, known := v.a.Decide(g.Base); !known {
					unknown = append(unknown, g.Base)
				}
			}
			if len(unknown) > 0 {
				p.Reportf(cfg, "", "the table of %s for %s does not know %s such as %q, so whether transformers quantizes them is not checked (ARCH001)", v.transformersName(), v.a, plural(len(unknown), "quantized tensor"), unknown[0])
			}
		},
	}
}

// firstLine returns s up to its first newline, at most 200 bytes.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// plural returns "1 <noun>" or "n <noun>s".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
