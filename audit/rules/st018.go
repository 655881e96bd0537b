package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st018() *audit.Rule {
	return structural(safetensors.CodeDataOutOfBounds, &audit.Rule{
		ID:    "ST018",
		Title: "tensor data past the end of the file",
		Doc: `A tensor's data_offsets point past the end of the file: the file was cut
short (interrupted download or copy) or the header is corrupt.

Fix: re-download the file, or re-save the model.`,
	}, "the file is truncated: "+resave)
}
