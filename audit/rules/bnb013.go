package rules

import (
	"strings"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

// maxHeaderStatsBytes is the largest float32 absmax vector BNB013 reads
// (4 Mi blocks: a 268 M-element weight at blocksize 64); larger ones are
// left to DEEP001 under --deep. Double-quantized weights store absmax as 8-bit codes; their F32
// nested_absmax is 1/256 of that and always read.
const maxHeaderStatsBytes = 16 << 20

func bnb013() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB013",
		Title:    "quantization statistics are NaN, infinite or negative",
		Severity: audit.Error,
		Doc: `bitsandbytes computes each block's absmax as the largest absolute value of
the block, and with double quantization nested_absmax the same way over
256 absmax values and nested_offset as their mean: all finite, none
negative. A NaN or infinity in "<weight>.absmax" (float32, without double
quantization), "<weight>.nested_absmax" or the quant state's nested_offset
turns every dequantized value of its blocks into NaN or infinity, and a
negative one flips their signs. The checkpoint was damaged, or quantized
from a weight that held NaN or Inf. dequant and verify refuse such a
weight too (the same check, formats/bnb.CheckStats).

A float32 absmax larger than 16 MiB is not read (DEEP001 checks it with
--deep).
Fix: re-quantize the weight from a finite original.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			for _, g := range packedGroups(c) {
				if g.State == nil {
					continue
				}
				if err := bnb.CheckOffset(*g.State); err != nil {
					p.Reportf(g.States[0].File.Path, g.States[0].Name, "%v; re-quantize the weight", err)
				}
				t, what := g.NestedAbsmax, "nested_absmax"
				if !g.State.DoubleQuant {
					t, what = g.Absmax, "absmax"
				}
				if t == nil || t.DType != dtype.F32 || len(t.Shape) != 1 {
					continue // BNB007, BNB009
				}
				if what == "absmax" && t.Size() > maxHeaderStatsBytes {
					continue // left to --deep (DEEP001)
				}
				vals, err := readF32s(c, t, int(t.Shape[0]))
				if err != nil {
					continue // unreadable: ST rules
				}
				if err := bnb.CheckStats(t.Name, vals); err != nil {
					p.Reportf(t.File.Path, t.Name, "%s; re-quantize the weight from a finite original", strings.TrimPrefix(err.Error(), t.Name))
				}
			}
		},
	}
}
