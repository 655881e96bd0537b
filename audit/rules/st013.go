package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st013() *audit.Rule {
	return structural(safetensors.CodeSizeMismatch, &audit.Rule{
		ID:    "ST013",
		Title: "data_offsets disagree with shape and dtype",
		Doc: `The tensor's data_offsets span a different number of bytes than its shape
and dtype need (elements times element size). Either the header was
edited (for example a dtype changed from F32 to U8 without changing the
shape), or the writer was buggy.

Fix: re-save the model from its tensors; when changing a dtype, change the
shape to match the bytes.`,
	}, "loaders refuse it or read the wrong bytes; "+resave)
}
