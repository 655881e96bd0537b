package rules

import (
	"errors"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st021() *audit.Rule {
	return &audit.Rule{
		ID:       "ST021",
		Title:    "file cannot be read",
		Severity: audit.Error,
		Doc: `The file could not be read at all: an I/O error, a permission problem, a
broken symbolic link, or a structural problem that no other ST rule names.
Nothing else about the file can be checked.

Fix: make the file readable (check permissions and that the download
finished), then audit again.`,
		Run: func(p *audit.Pass) {
			for _, f := range p.Checkpoint.Files {
				if f.Err == nil {
					continue
				}
				var fe *safetensors.FormatError
				if errors.As(f.Err, &fe) {
					if !mappedCode(fe.Code) {
						p.Reportf(f.Path, fe.Tensor, "%s (byte %d, code %v); %s", fe.Msg, fe.Offset, fe.Code, resave)
					}
					continue
				}
				p.Reportf(f.Path, "", "cannot read the file: %v; check that it exists, is readable and finished downloading", f.Err)
			}
		},
	}
}
