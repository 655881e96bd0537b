package rules

import (
	"github.com/qconv/qconv/audit"
)

func ix007() *audit.Rule {
	return &audit.Rule{
		ID:       "IX007",
		Title:    "metadata.total_size is wrong",
		Severity: audit.Error,
		Doc: `The index's metadata.total_size is not the sum of the byte sizes of the
checkpoint's tensors (the shards' data sections, headers excluded), which
is what save_pretrained writes. Loaders do not use it to load, but tools
use it to show the model size and to plan memory (for example
accelerate's device maps), so a wrong value misleads them. It is checked
only when every shard could be read. It is an error, as it is for qconv
inspect, convert and verify, which refuse such an index
(formats/checkpoint.Open).

Fix: set total_size to the value in the message, or regenerate the index.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			x := usableIndex(c)
			if x == nil || x.TotalSize < 0 {
				return
			}
			files := shardFiles(c)
			for _, s := range x.Files() {
				if f := files[s]; f == nil || f.Reader == nil {
					return
				}
			}
			var sum int64
			for _, t := range c.Tensors() {
				if len(c.TensorsNamed(t.Name)) > 1 {
					return // IX005
				}
				sum += t.Size()
			}
			if sum != x.TotalSize {
				p.Reportf(x.Path, "", "metadata.total_size is %d but the tensors take %d bytes; set it to %d", x.TotalSize, sum, sum)
			}
		},
	}
}
