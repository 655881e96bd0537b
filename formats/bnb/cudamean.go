package bnb

// cudaMeanF32 returns the float32 mean of x as torch computes it on CUDA.
//
// placeholder; owned by the mean helper. This temporary version returns the
// correctly rounded mean (float64 sum divided by n), which matches torch's
// CUDA reduction in most but not all cases (see the spec, §4.4).
func cudaMeanF32(x []float32) float32 {
	if len(x) == 0 {
		return float32(0) / float32(len(x)) // NaN, as torch's mean of an empty tensor
	}
	var sum float64
	for _, v := range x {
		sum += float64(v)
	}
	return float32(sum / float64(len(x)))
}
