package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st011() *audit.Rule {
	return structural(safetensors.CodeSizeOverflow, &audit.Rule{
		ID:    "ST011",
		Title: "tensor size overflows",
		Doc: `The number of elements (the product of the shape), or the number of bytes
they need, does not fit in a 64-bit integer. No real tensor is that large;
the shape is corrupt.

Fix: re-download or re-save the file.`,
	}, "the shape is corrupt; "+resave)
}
