package rules

import (
	"strings"

	"github.com/qconv/qconv/audit"
)

// nameRule reports, once per file, the tensors whose names match, in a
// checkpoint that is not a PEFT adapter. msg gets the count, the example
// name and ends the sentence with the fix.
func nameRule(p *audit.Pass, match func(name string) bool, report func(f *audit.File, n int, example string)) {
	c := p.Checkpoint
	if c.Adapter {
		return
	}
	for _, f := range c.MemberFiles() {
		if f.Reader == nil {
			continue
		}
		n, example := 0, ""
		for _, t := range f.Reader.Tensors() {
			if match(t.Name) {
				if n == 0 {
					example = t.Name
				}
				n++
			}
		}
		if n > 0 {
			report(f, n, example)
		}
	}
}

// hasComponent reports whether one of the dot-separated parts of name is
// one of parts.
func hasComponent(name string, parts ...string) bool {
	for _, c := range strings.Split(name, ".") {
		for _, p := range parts {
			if c == p {
				return true
			}
		}
	}
	return false
}
