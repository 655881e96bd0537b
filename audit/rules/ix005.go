package rules

import (
	"github.com/qconv/qconv/audit"
)

func ix005() *audit.Rule {
	return &audit.Rule{
		ID:       "IX005",
		Title:    "tensor held by two files",
		Severity: audit.Error,
		Doc: `Two safetensors files of the checkpoint hold a tensor with the same name.
Which one a loader uses depends on the loader and on file order, so two
tools can load different weights from the same checkpoint. This also
catches a directory of several .safetensors files without an index
(for example an old and a new export side by side).

Fix: remove the stale copy (re-save the shard without it) and regenerate
the index.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			for _, t := range c.Tensors() {
				ts := c.TensorsNamed(t.Name)
				if len(ts) < 2 || ts[0] != t {
					continue
				}
				for _, dup := range ts[1:] {
					p.Reportf(dup.File.Path, t.Name, "the tensor is also in %q; loaders may take either copy: keep one and regenerate the index", ts[0].File.Name)
				}
			}
		},
	}
}
