package rules

import (
	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

func bnb010() *audit.Rule {
	return &audit.Rule{
		ID:       "BNB010",
		Title:    "nested_quant_map is not the standard dynamic map",
		Severity: audit.Info,
		Doc: `With double quantization bitsandbytes stores its signed dynamic 8-bit map
(create_dynamic_map, 256 values from -0.99296875 to 1.0) as
nested_quant_map, and dequantizes absmax through the stored copy, so a
different table is used consistently and is not an error by itself. It
does say where the checkpoint came from: bitsandbytes' CPU quantizer up to
0.49 overwrote entry 0 with -1.0; any other difference means a custom or
damaged map.

Fix: nothing is needed for the entry-0 case. For other differences,
re-quantize on CUDA to get a standard checkpoint.`,
		Run: func(p *audit.Pass) {
			c := p.Checkpoint
			for _, g := range packedGroups(c) {
				q := g.NestedQuantMap
				if g.State == nil || !g.State.DoubleQuant || q == nil || !isShape(q, dtype.F32, 256) {
					continue
				}
				vals, err := readF32s(c, q, 256)
				if err != nil {
					continue
				}
				want := bnb.DynamicMap()
				var diff []int
				for i := range vals {
					if vals[i] != want[i] {
						diff = append(diff, i)
					}
				}
				switch {
				case len(diff) == 0:
				case len(diff) == 1 && diff[0] == 0 && vals[0] == -1:
					p.Reportf(q.File.Path, q.Name, "nested_quant_map[0] is -1.0 instead of -0.99296875: the signature of bitsandbytes' CPU quantizer up to 0.49; harmless, since loading uses the stored map")
				default:
					p.Reportf(q.File.Path, q.Name, "nested_quant_map differs from the standard dynamic map in %d of 256 entries (first at index %d: %g, standard %g); loading uses the stored map, but re-quantize on CUDA for a standard checkpoint",
						len(diff), diff[0], vals[diff[0]], want[diff[0]])
				}
			}
		},
	}
}
