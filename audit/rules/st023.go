package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

func st023() *audit.Rule {
	return structural(safetensors.CodeRankTooLarge, &audit.Rule{
		ID:    "ST023",
		Title: "tensor of more than 64 dimensions",
		Doc: `A tensor's shape has more than 64 dimensions. PyTorch cannot create such a
tensor (its limit is 64), so no checkpoint it saved has one; the header was
crafted or damaged (a shape of a million 1s, say), and qconv refuses it
everywhere rather than print or plan it.

Fix: re-save the tensor with its real shape.`,
	}, "no framework can load it; re-save the tensor with its real shape")
}
