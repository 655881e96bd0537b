package bnb

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
)

// TestBlockAbsmax checks BlockAbsmax against the plain reference quantizer
// (and so against QuantizeBlocks) on random, special and random-bit inputs.
func TestBlockAbsmax(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	special := specialValues()
	for iter := range 2000 {
		bs := validBlocksizes[rng.IntN(len(validBlocksizes))]
		n := rng.IntN(3*bs + 2)
		src := make([]float32, n)
		for i := range src {
			switch iter % 3 {
			case 0:
				src[i] = float32(rng.NormFloat64() * 0.02)
			case 1:
				src[i] = special[rng.IntN(len(special))]
			default:
				src[i] = math.Float32frombits(rng.Uint32())
			}
		}
		_, want := refQuantize(src, bs, NF4)
		got := make([]float32, NumBlocks(int64(n), bs))
		BlockAbsmax(got, src, bs)
		if !bytes.Equal(f32Bytes(got), f32Bytes(want)) {
			t.Fatalf("iter %d (bs %d, n %d): BlockAbsmax = %v, reference %v", iter, bs, n, got, want)
		}
	}
}

// TestCUDAMeanGolden checks the exported CUDAMean against the nested_offset
// values real bitsandbytes wrote.
func TestCUDAMeanGolden(t *testing.T) {
	cases := goldenOffsetCases(t)
	if len(cases) == 0 {
		t.Fatal("no golden double-quant cases")
	}
	for _, c := range cases {
		if got := CUDAMean(c.absmax); math.Float32bits(got) != math.Float32bits(c.offset) {
			t.Errorf("%s: CUDAMean = %v, bitsandbytes %v", c.name, got, c.offset)
		}
	}
	if got := CUDAMean(nil); !math.IsNaN(float64(got)) {
		t.Errorf("CUDAMean(nil) = %v, want NaN", got)
	}
}

// TestUndoDoubleQuantMap checks that the stored map is the one used: with a
// map whose entry 0 is -1.0 (as CPU-built bitsandbytes 0.42-0.49 wrote it)
// code 0 must decode through -1.0, and with DynamicMap() the result must
// equal UndoDoubleQuant's. The expected values are written out with the
// plain formula of spec §4.3.
func TestUndoDoubleQuantMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	n := 700
	codes := make([]byte, n)
	for i := range codes {
		codes[i] = byte(rng.IntN(256))
	}
	codes[0], codes[300], codes[699] = 0, 0, 255
	nested := []float32{0.25, 3, 1e-30}
	offset := float32(0.125)
	canonical := DynamicMap()
	cpuBuilt := DynamicMap()
	cpuBuilt[0] = -1
	for _, m := range []*[256]float32{&cpuBuilt, &canonical} {
		got := make([]float32, n)
		UndoDoubleQuantMap(got, codes, nested, m, offset)
		for i, c := range codes {
			want := refFTZ(m[c]*nested[i/NestedBlocksize]) + offset
			if math.Float32bits(got[i]) != math.Float32bits(want) {
				t.Fatalf("map[0]=%v: element %d (code %d): %v, want %v", m[0], i, c, got[i], want)
			}
		}
		if m == &cpuBuilt && got[0] != -0.25+offset {
			t.Fatalf("code 0 decoded to %v, want %v (map entry -1.0)", got[0], -0.25+offset)
		}
	}
	canon := make([]float32, n)
	UndoDoubleQuant(canon, codes, nested, offset)
	viaMap := make([]float32, n)
	UndoDoubleQuantMap(viaMap, codes, nested, &canonical, offset)
	if !bytes.Equal(f32Bytes(canon), f32Bytes(viaMap)) {
		t.Fatal("UndoDoubleQuant differs from UndoDoubleQuantMap with DynamicMap()")
	}
}
