package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st010() *audit.Rule {
	return structural(safetensors.CodeUnknownDType, &audit.Rule{
		ID:    "ST010",
		Title: "unknown dtype",
		Doc: `The tensor's dtype is not one of the safetensors dtypes (BOOL, F4, F6_E2M3,
F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, I16,
U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64). Dtype names are
case-sensitive ("bf16" is not "BF16").

Fix: re-save with a safetensors library that writes a valid dtype.`,
	}, "convert the tensor to a supported dtype and re-save")
}
