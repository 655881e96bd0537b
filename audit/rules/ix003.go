package rules

import (
	"github.com/qconv/qconv/audit"
)

func ix003() *audit.Rule {
	return &audit.Rule{
		ID:       "IX003",
		Title:    "index maps a tensor to a shard that lacks it",
		Severity: audit.Error,
		Doc: `The index says a tensor is in a shard file, the file exists, but it does
not hold a tensor of that name. Loaders that follow the index fail to find
the tensor (or leave the weight randomly initialized). This happens when
shards are regenerated without the index, or the index is hand-edited.

Fix: regenerate the index from the shards, or restore the shard that holds
the tensor.`,
		Run: func(p *audit.Pass) {
			x := usableIndex(p.Checkpoint)
			if x == nil {
				return
			}
			files := shardFiles(p.Checkpoint)
			for _, e := range x.WeightMap {
				f := files[e.File]
				if f == nil || f.Reader == nil {
					continue // IX002, or the shard's ST finding
				}
				if _, ok := f.Reader.Tensor(e.Tensor); ok {
					continue
				}
				if others := p.Checkpoint.TensorsNamed(e.Tensor); len(others) > 0 {
					p.Reportf(x.Path, e.Tensor, "the index maps the tensor to %q, which does not hold it, but %q does; regenerate the index", e.File, others[0].File.Name)
				} else {
					p.Reportf(x.Path, e.Tensor, "the index maps the tensor to %q, which does not hold it, and no shard does; restore the tensor or regenerate the index", e.File)
				}
			}
		},
	}
}
