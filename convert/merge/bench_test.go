package merge

import (
	"math/rand/v2"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

// BenchmarkMergeInto measures the merge kernel on one sub-chunk (128 Ki
// elements) of a 4096-column weight at rank 16, bf16 output; MB/s counts
// bytes of bf16 output.
func BenchmarkMergeInto(b *testing.B) {
	const rows, cols, r, n = 32, 4096, 16, 1 << 17
	rng := rand.New(rand.NewPCG(1, 1))
	f := &factors{r: r, l: make([]float64, rows*r), t: make([]float64, cols*r)}
	for i := range f.l {
		f.l[i] = float64(float32(rng.NormFloat64() * 0.02))
	}
	for i := range f.t {
		f.t[i] = float64(float32(rng.NormFloat64() * 0.02))
	}
	f.lmax = rowStat(f.l, r, func(acc, x float64) float64 { return max(acc, x) })
	f.rsum = rowStat(f.t, r, func(acc, x float64) float64 { return acc + x })
	w := make([]float32, n)
	for i := range w {
		w[i] = dtype.BF16ToF32(dtype.F32ToBF16(float32(rng.NormFloat64() * 0.02)))
	}
	p := make([]byte, 2*n)
	b.SetBytes(2 * n)
	b.ReportAllocs()
	for b.Loop() {
		if err := f.mergeInto(p, w, 0, cols, 2, dtype.BF16, nil); err != nil {
			b.Fatal(err)
		}
	}
}
