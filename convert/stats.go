package convert

import "math"

// firstNonFinite returns the index of the first NaN or ±Inf in v, or -1.
func firstNonFinite(v []float32) int {
	for i, f := range v {
		if math.Float32bits(f)&0x7f800000 == 0x7f800000 {
			return i
		}
	}
	return -1
}

// blockAbsmax computes the absmax of each block of src exactly as
// bnb.QuantizeBlocks does (the largest |x| ignoring NaN; -MaxFloat32 for
// an all-NaN block; 0 if the largest |x| is subnormal, which the GPU
// flushes), without encoding: the statistics pass needs only these.
// A test checks it against bnb.QuantizeBlocks.
func blockAbsmax(absmax, src []float32, blocksize int) {
	for b := 0; len(src) > 0; b++ {
		blk := src[:min(blocksize, len(src))]
		src = src[len(blk):]
		var mx uint32 // |x| as bits: unsigned order is numeric order, NaNs above +Inf
		for _, v := range blk {
			mx = max(mx, math.Float32bits(v)&0x7fffffff)
		}
		if mx > 0x7f800000 { // a NaN: the largest of the others
			mx = 0
			seen := false
			for _, v := range blk {
				if m := math.Float32bits(v) & 0x7fffffff; m <= 0x7f800000 {
					mx = max(mx, m)
					seen = true
				}
			}
			if !seen {
				absmax[b] = -math.MaxFloat32
				continue
			}
		}
		if mx < 0x00800000 {
			mx = 0
		}
		absmax[b] = math.Float32frombits(mx)
	}
}
