package rules

import "github.com/qconv/qconv/audit"

// hubHeaderLimit is the header size above which the Hugging Face Hub's
// parsers give up on a safetensors file.
const hubHeaderLimit = 25_000_000

func st020() *audit.Rule {
	return &audit.Rule{
		ID:       "ST020",
		Title:    "header larger than the Hub's 25,000,000-byte limit",
		Severity: audit.Warning,
		Doc: `The JSON header is over 25,000,000 bytes. The file is valid (the reference
implementation accepts headers up to 100,000,000 bytes), but the Hugging
Face Hub's safetensors parsers reject larger headers, so the Hub will not
show the file's tensors or parameter count, and tools that fetch headers
through the Hub API fail. Such headers come from very many small tensors
or from large __metadata__ values.

Fix: split the checkpoint into shards (save_pretrained with a smaller
max_shard_size), or move large metadata into a separate file.`,
		Run: func(p *audit.Pass) {
			for _, f := range p.Checkpoint.Files {
				if f.Reader == nil {
					continue
				}
				if n := f.Reader.HeaderLen(); n > hubHeaderLimit {
					p.Reportf(f.Path, "", "the header is %d bytes, over the Hub's limit of %d; shard the checkpoint (save_pretrained max_shard_size) or shrink __metadata__", n, hubHeaderLimit)
				}
			}
		},
	}
}
