package cast

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

// TestDecodeRounds checks every (from, to) pair of Decode, the one-pass
// casts of F32 included, against rounding through the dtype's bits with
// formats/dtype's scalar conversions, on random bit patterns (NaN, Inf,
// subnormals and ties included).
func TestDecodeRounds(t *testing.T) {
	const n = 1 << 14
	rng := rand.New(rand.NewPCG(1, 2))
	raw := make([]byte, 8*n)
	for i := range n {
		binary.LittleEndian.PutUint64(raw[8*i:], rng.Uint64())
	}
	widen := func(b []byte, d dtype.DType, i int) float32 {
		switch d {
		case dtype.F32:
			return math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		case dtype.BF16:
			return dtype.BF16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		case dtype.F16:
			return dtype.F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
		return float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
	}
	round := func(v float32, d dtype.DType) float32 {
		switch d {
		case dtype.BF16:
			return dtype.BF16ToF32(dtype.F32ToBF16(v))
		case dtype.F16:
			return dtype.F16ToF32(dtype.F32ToF16(v))
		}
		return v
	}
	got := make([]float32, n)
	for _, from := range []dtype.DType{dtype.F32, dtype.BF16, dtype.F16, dtype.F64} {
		for _, to := range []dtype.DType{dtype.F32, dtype.BF16, dtype.F16, from} {
			Decode(got, raw, from, to)
			for i := range n {
				want := round(widen(raw, from, i), to)
				if math.Float32bits(got[i]) != math.Float32bits(want) && !(want != want && got[i] != got[i]) {
					t.Fatalf("Decode %v -> %v: element %d is %v, want %v", from, to, i, got[i], want)
				}
			}
			b := make([]byte, n*to.Size())
			if to == dtype.F64 {
				continue
			}
			Encode(b, got, to)
			back := make([]float32, n)
			Decode(back, b, to, to)
			for i := range n {
				if math.Float32bits(back[i]) != math.Float32bits(got[i]) && !(got[i] != got[i] && back[i] != back[i]) {
					t.Fatalf("Encode %v: element %d is %v after a round trip, want %v", to, i, back[i], got[i])
				}
			}
		}
	}
}
