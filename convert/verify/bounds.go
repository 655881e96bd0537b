package verify

import (
	"math"
	"slices"
)

// halfCells returns, for each entry of a code book whose values lie in
// [-1, 1], the largest distance from that value to a point that rounds to
// it: the values nearer to code i than to any other code form an interval
// (cut at the midpoints between neighbouring distinct values and at ±1,
// the range of x/absmax), and the result is the larger of its two
// half-widths. A value quantized to the nearest code therefore lies within
// halfCells[code] of it. It is at most half the widest gap between
// neighbouring codes (or the distance from an end code to ±1).
//
// Equal values (FP4's codes 0 and 8, both zero) share one interval.
func halfCells(code []float32) []float64 {
	vals := make([]float64, len(code))
	for i, v := range code {
		vals[i] = float64(v)
	}
	sorted := slices.Clone(vals)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	out := make([]float64, len(code))
	for i, v := range vals {
		j, _ := slices.BinarySearch(sorted, v)
		lo, hi := -1.0, 1.0
		if j > 0 {
			lo = (sorted[j-1] + v) / 2
		}
		if j+1 < len(sorted) {
			hi = (v + sorted[j+1]) / 2
		}
		out[i] = math.Max(0, math.Max(v-lo, hi-v))
	}
	return out
}
