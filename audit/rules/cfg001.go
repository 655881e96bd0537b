package rules

import (
	"github.com/qconv/qconv/audit"
	"strings"
)

func cfg001() *audit.Rule {
	return &audit.Rule{
		ID:       "CFG001",
		Title:    "config.json is not valid",
		Severity: audit.Error,
		Doc: `config.json could not be read as a JSON object: a syntax error, a
duplicate key (Python keeps the last value silently; qconv refuses to
guess which one a loader sees), invalid UTF-8, or a top level that is not
an object. transformers cannot load the model. The other CFG rules need
the config and are skipped.

Fix: repair the JSON (python -m json.tool config.json shows the first
error), or regenerate it with model.config.save_pretrained().`,
		Run: func(p *audit.Pass) {
			if c := p.Checkpoint.Config; c != nil && c.Err != nil {
				p.Reportf(c.Path, "", "cannot read config.json: %s; fix the JSON or regenerate it with config.save_pretrained()", strings.TrimPrefix(c.Err.Error(), "pyjson: "))
			}
		},
	}
}
