package rules

import (
	"github.com/qconv/qconv/audit"
)

func ix002() *audit.Rule {
	return &audit.Rule{
		ID:       "IX002",
		Title:    "index names a shard file that does not exist",
		Severity: audit.Error,
		Doc: `The index maps tensors to a shard file that is not in the directory.
Loading fails with a missing-file error, or, with some loaders, the model
loads with those weights randomly initialized.

Fix: download or copy the missing shard, or regenerate the index if the
shards were renamed or merged.`,
		Run: func(p *audit.Pass) {
			x := usableIndex(p.Checkpoint)
			if x == nil {
				return
			}
			files := shardFiles(p.Checkpoint)
			count := map[string]int{}
			first := map[string]string{}
			for _, e := range x.WeightMap {
				if files[e.File] == nil {
					if count[e.File] == 0 {
						first[e.File] = e.Tensor
					}
					count[e.File]++
				}
			}
			for _, s := range x.Files() {
				if n := count[s]; n > 0 {
					p.Reportf(x.Path, first[s], "shard %q, which the index names for %d tensor(s), is missing from the directory; download it, or regenerate the index", s, n)
				}
			}
		},
	}
}
