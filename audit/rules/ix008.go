package rules

import (
	"errors"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/checkpoint"
)

func ix008() *audit.Rule {
	return &audit.Rule{
		ID:       "IX008",
		Title:    "index names a shard by an unsafe path",
		Severity: audit.Error,
		Doc: `The index names a shard file by a path instead of a plain file name: an
absolute path, a name with "/" or "\", or "." or "..". Shards must sit
beside the index; a loader that follows such a path reads a file outside
the checkpoint (path traversal), and the Hub never downloads it.

Fix: move the shards beside the index and list them by file name only.`,
		Run: func(p *audit.Pass) {
			x := p.Checkpoint.Index
			if x == nil {
				return
			}
			var prob *checkpoint.Problem
			if errors.As(x.Err, &prob) && prob.Code == checkpoint.CodeIndexUnsafePath {
				p.Reportf(x.Path, prob.Tensor, "%s; list shards by plain file name, beside the index", prob.Msg)
			}
		},
	}
}
