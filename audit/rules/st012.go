package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st012() *audit.Rule {
	return structural(safetensors.CodeSubByteSize, &audit.Rule{
		ID:    "ST012",
		Title: "sub-byte dtype tensor does not fill whole bytes",
		Doc: `A tensor of a sub-byte dtype (F4 is 4 bits, F6_* are 6 bits per element)
has an element count whose bits are not a multiple of 8; safetensors
stores whole bytes and the reference implementation refuses the file.

Fix: pad the tensor (for example to an even number of F4 elements) and
re-save.`,
	}, "pad the tensor to a whole number of bytes and re-save")
}
