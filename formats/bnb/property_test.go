package bnb

import (
	"bytes"
	"math"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// nibble returns code i of a packed stream: element 2j is the high nibble
// of byte j.
func nibble(packed []byte, i int) byte {
	if i%2 == 0 {
		return packed[i/2] >> 4
	}
	return packed[i/2] & 15
}

// halfWidestGap is half the widest distance between neighbouring values of
// a sorted code book.
func halfWidestGap(cb []float32) float64 {
	s := slices.Clone(cb)
	slices.Sort(s)
	var g float64
	for i := 1; i < len(s); i++ {
		g = max(g, float64(s[i])-float64(s[i-1]))
	}
	return g / 2
}

// TestPropPackLayout builds inputs whose codes are known (code-book values
// times a power-of-two absmax, which the GPU reciprocal inverts exactly)
// and checks that they come back in the documented nibble order, that the
// odd tail holds code(0.0), and that DequantizeBlocks restores the values.
func TestPropPackLayout(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		q := rapid.SampledFrom([]QuantType{NF4, FP4}).Draw(t, "q")
		bs := rapid.SampledFrom(validBlocksizes[:]).Draw(t, "bs")
		n := rapid.IntRange(1, 3*bs+1).Draw(t, "n")
		scale := float32(math.Ldexp(1, rapid.IntRange(-60, 60).Draw(t, "exp")))
		cb := CodeBook(q)
		valid := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
		if q == FP4 {
			valid = slices.Delete(valid, 8, 9) // code 8 is -0, which encodes as 0
		}
		codes := rapid.SliceOfN(rapid.SampledFrom(valid), n, n).Draw(t, "codes")
		// Give every block a ±1 element so that its absmax is the scale.
		for b := 0; b < n; b += bs {
			if q == NF4 {
				codes[b] = 15
			} else {
				codes[b] = 3
			}
		}
		src := make([]float32, n)
		for i, c := range codes {
			src[i] = cb[c] * scale
		}
		packed := make([]byte, PackedBytes(int64(n)))
		absmax := make([]float32, NumBlocks(int64(n), bs))
		QuantizeBlocks(packed, absmax, src, bs, q)
		for i, c := range codes {
			if got := nibble(packed, i); got != c {
				t.Fatalf("element %d: code %d, want %d", i, got, c)
			}
		}
		if n%2 == 1 {
			want := map[QuantType]byte{NF4: 7, FP4: 0}[q]
			if got := nibble(packed, n); got != want {
				t.Fatalf("tail pad code %d, want %d", got, want)
			}
		}
		for b, a := range absmax {
			if a != scale {
				t.Fatalf("block %d: absmax %g, want %g", b, a, scale)
			}
		}
		out := make([]float32, n)
		DequantizeBlocks(out, packed, absmax, bs, q)
		for i := range out {
			if out[i] != src[i] {
				t.Fatalf("element %d: dequantized %g, want %g", i, out[i], src[i])
			}
		}
	})
}

// finiteF32 draws finite float32 values of moderate magnitude (so that
// absmax*code never underflows), with exact zeros and negatives.
var finiteF32 = rapid.Custom(func(t *rapid.T) float32 {
	switch rapid.IntRange(0, 9).Draw(t, "kind") {
	case 0:
		return 0
	case 1:
		return float32(math.Ldexp(float64(rapid.IntRange(-8, 8).Draw(t, "m")), rapid.IntRange(-20, 20).Draw(t, "e")))
	}
	mag := math.Ldexp(rapid.Float64Range(0.5, 1).Draw(t, "frac"), rapid.IntRange(-60, 60).Draw(t, "exp"))
	if rapid.Bool().Draw(t, "neg") {
		mag = -mag
	}
	return float32(mag)
})

// TestPropQuantizeError checks that dequantization stays within half the
// widest code gap times the block's absmax, and that quantization is
// idempotent: requantizing the dequantized values gives the same bytes
// (for FP4 up to the two codes of zero).
func TestPropQuantizeError(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		q := rapid.SampledFrom([]QuantType{NF4, FP4}).Draw(t, "q")
		bs := rapid.SampledFrom(validBlocksizes[:]).Draw(t, "bs")
		src := rapid.SliceOfN(finiteF32, 1, 2*bs+3).Draw(t, "src")
		n := len(src)
		cb := CodeBook(q)
		bound := halfWidestGap(cb[:])
		packed := make([]byte, PackedBytes(int64(n)))
		absmax := make([]float32, NumBlocks(int64(n), bs))
		QuantizeBlocks(packed, absmax, src, bs, q)
		out := make([]float32, n)
		DequantizeBlocks(out, packed, absmax, bs, q)
		for i, x := range src {
			am := float64(absmax[i/bs])
			if err := math.Abs(float64(out[i]) - float64(x)); err > bound*am*(1+1e-6) {
				t.Fatalf("element %d: %g dequantized to %g, error %g > %g x absmax %g", i, x, out[i], err, bound, am)
			}
		}
		again := make([]byte, len(packed))
		QuantizeBlocks(again, make([]float32, len(absmax)), out, bs, q)
		if q == FP4 {
			for _, p := range [][]byte{packed, again} {
				for j, b := range p {
					if b>>4 == 8 {
						b &= 0x0f
					}
					if b&15 == 8 {
						b &= 0xf0
					}
					p[j] = b
				}
			}
		}
		if !bytes.Equal(again, packed) {
			t.Fatalf("requantizing the dequantized values changed the codes")
		}
	})
}

// TestPropDoubleQuant checks the nested statistics: one code per absmax,
// one nested absmax per 256, and UndoDoubleQuant within half the widest
// dynamic-map gap of each value (times its block's nested absmax).
func TestPropDoubleQuant(t *testing.T) {
	dm := DynamicMap()
	bound := halfWidestGap(dm[:])
	rapid.Check(t, func(t *rapid.T) {
		absmax := rapid.SliceOfN(rapid.Float32Range(1e-6, 10), 1, 700).Draw(t, "absmax")
		codes, nested, off := DoubleQuant(absmax)
		if len(codes) != len(absmax) || int64(len(nested)) != NumBlocks(int64(len(absmax)), NestedBlocksize) {
			t.Fatalf("lengths %d, %d", len(codes), len(nested))
		}
		back := make([]float32, len(absmax))
		UndoDoubleQuant(back, codes, nested, off)
		for i, a := range absmax {
			na := float64(nested[i/NestedBlocksize])
			if err := math.Abs(float64(back[i]) - float64(a)); err > bound*na*(1+1e-5)+1e-6*math.Abs(float64(off)) {
				t.Fatalf("absmax %d: %g came back as %g (offset %g, nested %g)", i, a, back[i], off, na)
			}
		}
	})
}

// TestPropDoubleQuantOffsetPieces checks that double-quantizing an absmax
// vector a piece of whole nested blocks at a time, with the offset of the
// whole vector, gives DoubleQuant's bytes.
func TestPropDoubleQuantOffsetPieces(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		absmax := rapid.SliceOfN(rapid.Float32Range(1e-6, 10), 1, 3000).Draw(t, "absmax")
		groups := rapid.IntRange(1, 4).Draw(t, "groups")
		codes, nested, off := DoubleQuant(absmax)
		gotCodes := make([]byte, len(codes))
		gotNested := make([]float32, len(nested))
		step := groups * NestedBlocksize
		for b := 0; b < len(absmax); b += step {
			e := min(b+step, len(absmax))
			DoubleQuantOffset(gotCodes[b:e], gotNested[b/NestedBlocksize:], absmax[b:e], off)
		}
		if !bytes.Equal(gotCodes, codes) {
			t.Fatalf("codes differ")
		}
		for i := range nested {
			if math.Float32bits(gotNested[i]) != math.Float32bits(nested[i]) {
				t.Fatalf("nested absmax %d: %v, want %v", i, gotNested[i], nested[i])
			}
		}
	})
}
