package rules

import (
	"github.com/qconv/qconv/audit"
)

func st022() *audit.Rule {
	return &audit.Rule{
		ID:       "ST022",
		Title:    "__metadata__ without a known \"format\"",
		Severity: audit.Warning,
		Doc: `The file has a __metadata__ object, but its "format" entry is missing or is
not one of "pt", "tf", "flax", "mlx". transformers' from_pretrained then
refuses the file ("does not contain the valid metadata"; the format of a
PyTorch checkpoint is "pt"). Files without any __metadata__ are fine.

Fix: re-save with __metadata__ {"format": "pt"} (safetensors.torch.save_file
(tensors, path, metadata={"format": "pt"}); save_pretrained does this).`,
		Run: func(p *audit.Pass) {
			for _, f := range p.Checkpoint.Files {
				if f.Reader == nil {
					continue
				}
				md := f.Reader.Metadata()
				if md == nil {
					continue
				}
				format, ok := md["format"]
				switch {
				case !ok:
					p.Reportf(f.Path, "", `__metadata__ has no "format" entry, so transformers refuses the file; re-save with metadata {"format": "pt"}`)
				case format != "pt" && format != "tf" && format != "flax" && format != "mlx":
					p.Reportf(f.Path, "", `__metadata__ "format" is %q, which transformers refuses; re-save with metadata {"format": "pt"}`, format)
				}
			}
		},
	}
}
