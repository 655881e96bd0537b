package bnb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

var rawTypes = []dtype.DType{dtype.F32, dtype.BF16, dtype.F16}

// refDecode is the cast the converter applies, written with formats/dtype
// element by element: src elements rounded to the model dtype (unless it is
// the source dtype: torch's .to is then a no-op), widened.
func refDecode(raw []byte, src, model dtype.DType) []float32 {
	n := len(raw) / src.Size()
	out := make([]float32, n)
	for i := range out {
		var f float32
		switch src {
		case dtype.F32:
			f = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		case dtype.BF16:
			f = dtype.BF16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
		case dtype.F16:
			f = dtype.F16ToF32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
		switch {
		case model == src:
		case model == dtype.BF16:
			f = dtype.BF16ToF32(dtype.F32ToBF16(f))
		case model == dtype.F16:
			f = dtype.F16ToF32(dtype.F32ToF16(f))
		}
		out[i] = f
	}
	return out
}

func refFirstNonFinite(v []float32) int {
	for i, f := range v {
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			return i
		}
	}
	return -1
}

// special16 are BF16 and F16 bit patterns at the edges: zeros, the
// smallest and largest subnormals and normals, infinities, NaNs.
var special16 = map[dtype.DType][]uint16{
	dtype.BF16: {0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x807f, 0x0080, 0x8080, 0x7f7f, 0xff7f,
		0x7f80, 0xff80, 0x7fc0, 0xffc0, 0x7f81, 0xffff, 0x3f80, 0xbf80, 0x3db0, 0xbdb0},
	dtype.F16: {0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x83ff, 0x0400, 0x8400, 0x7bff, 0xfbff,
		0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01, 0xffff, 0x3c00, 0xbc00, 0x2d80, 0xad80},
}

// special32 are float32 values that exercise the casts as well as the
// kernel: values that overflow BF16 or F16 when rounded, ties of the
// rounding, and the kernel's special values.
func special32() []float32 {
	v := specialValues()
	v = append(v, 65504, 65519, 65520, -65520, 0x1.fefffep127, 0x1.ff0000p127, -0x1.ff0000p127,
		math.Float32frombits(0x3f808000), math.Float32frombits(0x3f818000), math.Float32frombits(0x3f808001),
		0x1p-24, 0x1p-25, 0x1.8p-25, -0x1p-24, 0x1p-14, 0x1.ff8p-15, 1e-8, 1e-3)
	return v
}

// rawInput draws n elements of dtype src: mode 0 normal weights, 1 special
// values, 2 random bits, 3 a mixture, 4 all zeros with a few specials, 5
// normal weights with finite specials (zeros, subnormals, the largest
// finite values), which the fast loops must handle themselves.
func rawInput(rng *rand.Rand, src dtype.DType, n, mode int) []byte {
	sp32 := special32()
	size := src.Size()
	raw := make([]byte, n*size)
	scale := math.Ldexp(1, rng.IntN(40)-30)
	if src != dtype.F32 {
		scale = math.Ldexp(1, rng.IntN(24)-16)
	}
	put := func(i int, f float32) {
		switch src {
		case dtype.F32:
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
		case dtype.BF16:
			binary.LittleEndian.PutUint16(raw[2*i:], dtype.F32ToBF16(f))
		case dtype.F16:
			binary.LittleEndian.PutUint16(raw[2*i:], dtype.F32ToF16(f))
		}
	}
	putBits := func(i int) {
		if size == 4 {
			binary.LittleEndian.PutUint32(raw[4*i:], rng.Uint32())
		} else {
			binary.LittleEndian.PutUint16(raw[2*i:], uint16(rng.Uint32()))
		}
	}
	putSpecial := func(i int) {
		if size == 2 && rng.IntN(2) == 0 {
			s := special16[src]
			binary.LittleEndian.PutUint16(raw[2*i:], s[rng.IntN(len(s))])
			return
		}
		put(i, sp32[rng.IntN(len(sp32))])
	}
	for i := range n {
		m := mode
		if m == 3 {
			m = []int{0, 0, 0, 0, 0, 0, 1, 2}[rng.IntN(8)]
		}
		switch m {
		case 0:
			put(i, float32(rng.NormFloat64()*scale))
		case 1:
			putSpecial(i)
		case 2:
			putBits(i)
		case 4:
			if rng.IntN(50) == 0 {
				putSpecial(i)
			}
		case 5:
			put(i, float32(rng.NormFloat64()*scale))
			if rng.IntN(8) == 0 {
				putSpecial(i)
				if f := refDecode(raw[i*size:(i+1)*size], src, src)[0]; math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
					put(i, 0)
				}
			}
		}
	}
	if mode == 1 && n > 0 && rng.IntN(2) == 0 {
		put(0, 1) // absmax 1: the special values are scaled exactly
	}
	return raw
}

// checkRawCase compares QuantizeRaw and BlockAbsmaxRaw with QuantizeBlocks
// and the plain reference on the decoded values.
func checkRawCase(t *testing.T, raw []byte, src, model dtype.DType, bs int, q QuantType) {
	t.Helper()
	vals := refDecode(raw, src, model)
	n := len(vals)
	wantP, wantA := refQuantize(vals, bs, q)
	fastP := make([]byte, PackedBytes(int64(n)))
	fastA := make([]float32, NumBlocks(int64(n), bs))
	QuantizeBlocks(fastP, fastA, vals, bs, q)
	if !bytes.Equal(fastP, wantP) || !bytes.Equal(f32Bytes(fastA), f32Bytes(wantA)) {
		t.Fatalf("QuantizeBlocks differs from the reference (%v→%v %v bs %d n %d)", src, model, q, bs, n)
	}
	wantNF := refFirstNonFinite(vals)
	what := fmt.Sprintf("%v→%v %v bs %d n %d", src, model, q, bs, n)

	for _, simd := range []bool{false, true} {
		gotP := make([]byte, len(wantP)+1)
		gotA := make([]float32, len(wantA)+1)
		gotP[len(wantP)], gotA[len(wantA)] = 0xa5, 42 // must stay untouched
		nf, err := quantizeRaw(gotP, gotA, raw, src, model, bs, q, simd)
		if err != nil {
			t.Fatalf("%s: QuantizeRaw: %v", what, err)
		}
		if nf != wantNF {
			t.Fatalf("%s (simd %v): QuantizeRaw non-finite index %d, want %d", what, simd, nf, wantNF)
		}
		if !bytes.Equal(gotP[:len(wantP)], wantP) {
			t.Fatalf("%s (simd %v): QuantizeRaw packed\n got %x\nwant %x\n in %v", what, simd, gotP[:len(wantP)], wantP, vals)
		}
		if !bytes.Equal(f32Bytes(gotA[:len(wantA)]), f32Bytes(wantA)) {
			t.Fatalf("%s (simd %v): QuantizeRaw absmax %v, want %v", what, simd, gotA[:len(wantA)], wantA)
		}
		if gotP[len(wantP)] != 0xa5 || gotA[len(wantA)] != 42 {
			t.Fatalf("%s (simd %v): QuantizeRaw wrote past the end", what, simd)
		}
	}

	for _, simd := range []bool{false, true} {
		amA := make([]float32, len(wantA)+1)
		amA[len(wantA)] = 42
		nf, err := blockAbsmaxRaw(amA, raw, src, model, bs, simd)
		if err != nil {
			t.Fatalf("%s: BlockAbsmaxRaw: %v", what, err)
		}
		if nf != wantNF {
			t.Fatalf("%s (simd %v): BlockAbsmaxRaw non-finite index %d, want %d", what, simd, nf, wantNF)
		}
		if !bytes.Equal(f32Bytes(amA[:len(wantA)]), f32Bytes(wantA)) || amA[len(wantA)] != 42 {
			t.Fatalf("%s (simd %v): BlockAbsmaxRaw %v, want %v", what, simd, amA, wantA)
		}
	}

	dec := make([]float32, n)
	if err := DecodeRaw(dec, raw, src, model); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f32Bytes(dec), f32Bytes(vals)) {
		t.Fatalf("%s: DecodeRaw differs from the element-wise casts", what)
	}
}

// TestQuantizeRawMatchesFloat32 checks every supported dtype pair on random
// and special inputs, all block sizes, odd lengths and partial blocks, and
// lengths that cross the raw chunk size.
func TestQuantizeRawMatchesFloat32(t *testing.T) {
	forEachEncoder(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(21, 22))
		iters := 600
		if testing.Short() {
			iters = 100
		}
		for _, src := range rawTypes {
			for _, model := range rawTypes {
				t.Run(src.String()+"_"+model.String(), func(t *testing.T) {
					for iter := range iters {
						q := QuantType(1 + iter%2)
						bs := validBlocksizes[rng.IntN(len(validBlocksizes))]
						n := rng.IntN(3*bs + 2)
						switch iter % 10 {
						case 0:
							n = rng.IntN(9)
						case 1:
							n = rawChunk + rng.IntN(3*bs) - bs
						}
						checkRawCase(t, rawInput(rng, src, n, iter%6), src, model, bs, q)
					}
				})
			}
		}
	})
}

// TestQuantizeRawThresholds puts scaled values exactly on, and one ulp of
// the model dtype around, every code threshold: blocks of absmax 1 whose
// other elements are the thresholds rounded to the model dtype.
func TestQuantizeRawThresholds(t *testing.T) {
	forEachEncoder(t, func(t *testing.T) {
		for _, model := range rawTypes {
			var vals []float32
			for _, b := range append(nf4ThresholdBits[:], fp4ThresholdBits[:]...) {
				f := math.Float32frombits(b)
				for _, x := range []float32{f, -f} {
					switch model {
					case dtype.BF16:
						h := dtype.F32ToBF16(x)
						vals = append(vals, dtype.BF16ToF32(h-1), dtype.BF16ToF32(h), dtype.BF16ToF32(h+1))
					case dtype.F16:
						h := dtype.F32ToF16(x)
						vals = append(vals, dtype.F16ToF32(h-1), dtype.F16ToF32(h), dtype.F16ToF32(h+1))
					default:
						vals = append(vals, math.Float32frombits(b-1), x, math.Float32frombits(b+1))
					}
				}
			}
			for _, bs := range []int{32, 64} {
				// Every block gets a 1.0 (absmax 1, reciprocal exactly 1).
				var blocks []float32
				for i, v := range vals {
					if len(blocks)%bs == 0 {
						blocks = append(blocks, 1)
					}
					blocks = append(blocks, v)
					_ = i
				}
				for _, src := range rawTypes {
					raw := make([]byte, len(blocks)*src.Size())
					for i, f := range blocks {
						switch src {
						case dtype.F32:
							binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(f))
						case dtype.BF16:
							binary.LittleEndian.PutUint16(raw[2*i:], dtype.F32ToBF16(f))
						case dtype.F16:
							binary.LittleEndian.PutUint16(raw[2*i:], dtype.F32ToF16(f))
						}
					}
					for _, q := range []QuantType{NF4, FP4} {
						checkRawCase(t, raw, src, model, bs, q)
					}
				}
			}
		}
	})
}

// TestQuantizeRawGolden quantizes the golden inputs from their stored bytes
// and compares with bitsandbytes' packed weights and absmax.
func TestQuantizeRawGolden(t *testing.T) {
	forEachEncoder(t, func(t *testing.T) {
		for _, file := range []string{goldenVectors, goldenVectorsWide} {
			g := gtOpen(t, file)
			cs := casesVectors
			if file == goldenVectorsWide {
				cs = casesWide
			}
			for _, c := range cs(t, g) {
				in := g.get(t, c.input)
				n := int64(len(in.data) / in.dt.Size())
				packed := make([]byte, PackedBytes(n))
				absmax := make([]float32, NumBlocks(n, c.bs))
				if _, err := QuantizeRaw(packed, absmax, in.data, in.dt, in.dt, c.bs, c.qt); err != nil {
					t.Fatal(err)
				}
				w := c.name + ".weight"
				gtEqual(t, c.name+": packed weight", packed, g.get(t, w).data)
				if !c.dq {
					gtEqual(t, c.name+": absmax", f32Bytes(absmax), g.get(t, w+".absmax").data)
				}
			}
		}
	})
}

func TestQuantizeRawErrors(t *testing.T) {
	if _, err := QuantizeRaw(nil, nil, make([]byte, 4), dtype.I32, dtype.BF16, 64, NF4); !errors.Is(err, ErrUnsupportedDType) {
		t.Errorf("I32 source: %v, want ErrUnsupportedDType", err)
	}
	if _, err := BlockAbsmaxRaw(nil, make([]byte, 4), dtype.F32, dtype.F64, 64); !errors.Is(err, ErrUnsupportedDType) {
		t.Errorf("F64 model: %v, want ErrUnsupportedDType", err)
	}
	if _, err := QuantizeRaw(make([]byte, 2), make([]float32, 1), make([]byte, 3), dtype.BF16, dtype.BF16, 64, NF4); err == nil {
		t.Error("3 bytes of BF16: no error")
	}
	if err := DecodeRaw(make([]float32, 2), make([]byte, 7), dtype.F32, dtype.F32); err == nil {
		t.Error("DecodeRaw of a short input: no error")
	}
	if nf, err := QuantizeRaw(nil, nil, nil, dtype.BF16, dtype.BF16, 64, NF4); nf != -1 || err != nil {
		t.Errorf("empty input: %d, %v", nf, err)
	}
}

// FuzzQuantizeRaw compares QuantizeRaw with QuantizeBlocks on the decoded
// values for arbitrary bytes. The first byte picks the dtype pair, quant
// type and block size.
func FuzzQuantizeRaw(f *testing.F) {
	g := gtOpenF(f, goldenVectorsWide)
	for _, name := range []string{"input_bf16", "input_f16", "input_f32", "input_odd1000_bf16"} {
		if v, ok := g.tensors[name]; ok {
			f.Add(append([]byte{byte(len(name))}, v.data[:min(len(v.data), 600)]...))
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for sel := range 18 {
		src := rawTypes[sel%3]
		f.Add(append([]byte{byte(sel)}, rawInput(rng, src, 70, 1)...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		sel := int(data[0])
		src, model := rawTypes[sel%3], rawTypes[sel/3%3]
		q := QuantType(1 + sel/9%2)
		bs := []int{32, 64}[sel/18%2]
		raw := data[1:]
		raw = raw[:len(raw)/src.Size()*src.Size()]
		checkRawCase(t, raw, src, model, bs, q)
	})
}

// TestEncodeSIMDMatchesGo runs the vector kernels and the portable loops on
// every 16-bit pattern (specials included: the two must agree even where
// QuantizeRaw would not call them) with reciprocals from tiny to infinite.
func TestEncodeSIMDMatchesGo(t *testing.T) {
	forEachEncoder(t, func(t *testing.T) {
		if !haveAVX2 {
			t.Skip("no vector kernels on this CPU or build")
		}
		const bs = 64
		src := make([]byte, 2<<16)
		for i := range 1 << 16 {
			binary.LittleEndian.PutUint16(src[2*i:], uint16(i*40503)) // a permutation
		}
		nb := len(src) / (2 * bs)
		rng := rand.New(rand.NewPCG(9, 9))
		rs := make([]float32, nb)
		for _, scale := range []float64{0x1p-120, 0x1p-60, 1e-3, 1, 12.5, 1e4, 0x1p60, 0x1p100, 0x1p126, math.Inf(1)} {
			for i := range rs {
				rs[i] = float32(scale * (1 + rng.Float64()))
				if rng.IntN(7) == 0 {
					rs[i] = float32(scale)
				}
			}
			for _, f16 := range []bool{false, true} {
				for _, q := range []QuantType{NF4, FP4} {
					want := make([]byte, len(src)/4)
					got := make([]byte, len(src)/4)
					for b := range nb {
						o, blk := want[b*bs/2:(b+1)*bs/2], src[b*2*bs:(b+1)*2*bs]
						if f16 {
							encodeF16(o, blk, rs[b], tableFor(q))
						} else {
							encodeBF16(o, blk, rs[b], tableFor(q))
						}
					}
					if !encodeBlocksSIMD(got, src, rs, bs, f16, q) {
						t.Fatal("encodeBlocksSIMD declined")
					}
					for i := range want {
						if got[i] != want[i] {
							b := i / (bs / 2)
							e := 2 * i
							t.Fatalf("f16 %v %v scale %g: byte %d (block %d, r %g, elements %#04x %#04x): vector %#02x, Go %#02x",
								f16, q, scale, i, b, rs[b], binary.LittleEndian.Uint16(src[2*e:]), binary.LittleEndian.Uint16(src[2*e+2:]), got[i], want[i])
						}
					}
				}
			}
		}
	})
}

// TestEncodeSIMDThresholds makes the vector kernels and the portable loops
// scale values onto, and a few ulps around, every code threshold (and
// FP4's sign limit -2^-126): each block pairs a random x with a reciprocal
// r near threshold/x, so that x·r rounds to the threshold or next to it.
func TestEncodeSIMDThresholds(t *testing.T) {
	forEachEncoder(t, func(t *testing.T) {
		if !haveAVX2 {
			t.Skip("no vector kernels on this CPU or build")
		}
		const bs = 32
		var targets []uint32
		for _, b := range append(append(nf4ThresholdBits[:], fp4ThresholdBits[:]...), 0x00800000) {
			for d := uint32(0); d < 3; d++ {
				targets = append(targets, b-d, b+d, b-d|0x80000000, b+d|0x80000000)
			}
		}
		rng := rand.New(rand.NewPCG(3, 3))
		for _, f16 := range []bool{false, true} {
			var src []byte
			var rs []float32
			for _, target := range targets {
				for range 40 {
					// x: a random positive normal 16-bit value of moderate size.
					var h uint16
					var x float32
					if f16 {
						h = uint16(0x3000 + rng.IntN(0x1000))
						x = dtype.F16ToF32(h)
					} else {
						h = uint16(0x3c00 + rng.IntN(0x0400))
						x = dtype.BF16ToF32(h)
					}
					tv := math.Float32frombits(target &^ 0x80000000)
					r := math.Float32bits(tv / x)
					r += uint32(rng.IntN(3)) - 1
					rf := math.Float32frombits(r)
					if f16 {
						rf *= 0x1p112 // encodeF16 takes r·2^112
					}
					rs = append(rs, rf)
					for i := range bs {
						v := h
						if target&0x80000000 != 0 {
							v |= 0x8000
						}
						if i%4 == 3 {
							v ^= 0x8000
						}
						src = binary.LittleEndian.AppendUint16(src, v)
					}
				}
			}
			for _, q := range []QuantType{NF4, FP4} {
				want := make([]byte, len(src)/4)
				got := make([]byte, len(src)/4)
				for b := range rs {
					o, blk := want[b*bs/2:(b+1)*bs/2], src[b*2*bs:(b+1)*2*bs]
					if f16 {
						encodeF16(o, blk, rs[b], tableFor(q))
					} else {
						encodeBF16(o, blk, rs[b], tableFor(q))
					}
				}
				encodeBlocksSIMD(got, src, rs, bs, f16, q)
				if i := firstDiff(got, want); i >= 0 {
					t.Fatalf("f16 %v %v: byte %d (block %d): vector %#02x, Go %#02x", f16, q, i, i/(bs/2), got[i], want[i])
				}
			}
		}
	})
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestBlockStatsSIMD compares the vector statistics kernel with bf16Stats
// and halfMax on blocks of random patterns, of special patterns, and of
// small magnitudes around the BF16 subnormal limit.
func TestBlockStatsSIMD(t *testing.T) {
	if !haveAVX2 {
		t.Skip("no vector kernels on this CPU or build")
	}
	rng := rand.New(rand.NewPCG(4, 4))
	for _, bs := range validBlocksizes {
		nb := 400
		src := make([]byte, 2*bs*nb)
		for b := range nb {
			for i := range bs {
				var h uint16
				switch b % 4 {
				case 0:
					h = uint16(rng.Uint32())
				case 1:
					s := special16[dtype.BF16]
					h = s[rng.IntN(len(s))]
				case 2:
					h = uint16(rng.IntN(0x100)) | uint16(rng.IntN(2))<<15
				}
				binary.LittleEndian.PutUint16(src[2*(b*bs+i):], h)
			}
			if b%4 == 3 { // zeros and one small magnitude
				edge := []uint16{0x0001, 0x007e, 0x007f, 0x0080, 0x0081, 0x807f, 0x8001, 0x8080, 0x8000}
				binary.LittleEndian.PutUint16(src[2*(b*bs+rng.IntN(bs)):], edge[rng.IntN(len(edge))])
			}
		}
		st := make([]uint32, nb)
		blockStatsSIMD(st, src, bs)
		for b := range nb {
			blk := src[2*b*bs : 2*(b+1)*bs]
			mx, sub := bf16Stats(blk)
			want := mx
			if sub {
				want |= 1 << 16
			}
			if st[b] != want || halfMax(blk) != mx {
				t.Fatalf("bs %d block %d: vector %#x, bf16Stats %#x, halfMax %#x", bs, b, st[b], want, halfMax(blk))
			}
		}
	}
}

// TestRoundBF16 checks both F32 to BF16 rounding loops against
// dtype.F32ToBF16 on random and special patterns and odd lengths; with
// -bnb.exhaustive, on all 2^32 patterns.
func TestRoundBF16(t *testing.T) {
	check := func(src []byte) {
		t.Helper()
		n := len(src) / 4
		want := make([]byte, 2*n)
		for i := range n {
			binary.LittleEndian.PutUint16(want[2*i:], dtype.F32ToBF16(math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))))
		}
		got := make([]byte, 2*n)
		roundF32ToBF16(got, src)
		if i := firstDiff(got, want); i >= 0 {
			t.Fatalf("roundF32ToBF16: element %d (%#08x): %x, want %x", i/2, binary.LittleEndian.Uint32(src[4*(i/2):]), got[i&^1:i&^1+2], want[i&^1:i&^1+2])
		}
		if roundBF16SIMD(got, src) {
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("roundBF16SIMD: element %d (%#08x): %x, want %x", i/2, binary.LittleEndian.Uint32(src[4*(i/2):]), got[i&^1:i&^1+2], want[i&^1:i&^1+2])
			}
		}
	}
	rng := rand.New(rand.NewPCG(8, 8))
	var src []byte
	for _, f := range special32() {
		src = binary.LittleEndian.AppendUint32(src, math.Float32bits(f))
	}
	for _, u := range []uint32{0x7f800001, 0xff800001, 0x7fbfffff, 0x7fffffff, 0xffffffff, 0x7f7fffff, 0x3f80ffff, 0x3f818000, 0x3f808000, 0x3f817fff} {
		src = binary.LittleEndian.AppendUint32(src, u)
	}
	for range 100000 {
		u := rng.Uint32()
		if rng.IntN(4) == 0 {
			u = u&^0xffff | []uint32{0x7fff, 0x8000, 0x8001, 0xffff, 0}[rng.IntN(5)]
		}
		src = binary.LittleEndian.AppendUint32(src, u)
	}
	for n := range 40 {
		check(src[:4*n])
	}
	check(src)
	if !*exhaustive {
		return
	}
	buf := make([]byte, 4<<20)
	for hi := uint64(0); hi < 1<<32; hi += 1 << 20 {
		for i := range 1 << 20 {
			binary.LittleEndian.PutUint32(buf[4*i:], uint32(hi)+uint32(i))
		}
		check(buf)
	}
}

// TestF16Conversions checks the package's F16 conversions against
// formats/dtype bit for bit: f16ToF32 on all 2^16 patterns, f32ToF16 on
// the edges of every case and random patterns (all 2^32 with
// -bnb.exhaustive).
func TestF16Conversions(t *testing.T) {
	for h := range 1 << 16 {
		got, want := math.Float32bits(f16ToF32(uint16(h))), math.Float32bits(dtype.F16ToF32(uint16(h)))
		if got != want {
			t.Fatalf("f16ToF32(%#04x) = %#08x, want %#08x", h, got, want)
		}
	}
	var edges []byte // also run through roundF32ToF16
	check := func(u uint32) {
		if got, want := f32ToF16(u), dtype.F32ToF16(math.Float32frombits(u)); got != want {
			t.Fatalf("f32ToF16(%#08x) = %#04x, want %#04x", u, got, want)
		}
		if len(edges) < 4<<20 {
			edges = binary.LittleEndian.AppendUint32(edges, u)
		}
	}
	for _, b := range []uint32{0, 0x33000000, 0x33800000, 0x38000000, 0x38800000, 0x477fe000, 0x477ff000, 0x47800000, 0x7f800000, 0x7fc00000} {
		for d := range uint32(0x3000) {
			check(b + d - 0x1800)
			check(b + d - 0x1800 | 0x80000000)
		}
	}
	rng := rand.New(rand.NewPCG(6, 6))
	for range 1 << 20 {
		check(rng.Uint32())
	}
	h := make([]byte, len(edges)/2)
	roundF32ToF16(h, edges)
	for i := range len(h) / 2 {
		u := binary.LittleEndian.Uint32(edges[4*i:])
		if got, want := binary.LittleEndian.Uint16(h[2*i:]), dtype.F32ToF16(math.Float32frombits(u)); got != want {
			t.Fatalf("roundF32ToF16(%#08x) = %#04x, want %#04x", u, got, want)
		}
	}
	if *exhaustive {
		for u := uint64(0); u < 1<<32; u++ {
			check(uint32(u))
		}
	}
}

// f32sOf views little-endian bytes as float32 values (a copy).
func f32sOf(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// TestEncode32SIMD compares the float32 vector encoders with encodeBlock
// on random bit patterns (specials included) and on products placed on
// and around every threshold, and the float32 statistics kernel with a
// plain loop.
func TestEncode32SIMD(t *testing.T) {
	forEachEncoder(t, func(t *testing.T) {
		if !haveAVX2 {
			t.Skip("no vector kernels on this CPU or build")
		}
		const bs = 32
		rng := rand.New(rand.NewPCG(12, 12))
		var src []byte
		var rs []float32
		var targets []uint32
		for _, b := range append(append(nf4ThresholdBits[:], fp4ThresholdBits[:]...), 0x00800000) {
			for d := uint32(0); d < 3; d++ {
				targets = append(targets, b-d, b+d, b-d|0x80000000, b+d|0x80000000)
			}
		}
		for _, target := range targets {
			for range 20 {
				x := math.Float32frombits(0x3c000000 + rng.Uint32()%0x02000000)
				r := math.Float32bits(math.Float32frombits(target&^0x80000000)/x) + uint32(rng.IntN(3)) - 1
				rs = append(rs, math.Float32frombits(r))
				for i := range bs {
					u := math.Float32bits(x) | target&0x80000000
					if i%4 == 3 {
						u ^= 0x80000000
					}
					src = binary.LittleEndian.AppendUint32(src, u)
				}
			}
		}
		for range 2000 {
			rs = append(rs, float32(math.Ldexp(1+rng.Float64(), rng.IntN(250)-125)))
			for range bs {
				u := rng.Uint32()
				if rng.IntN(3) == 0 {
					u &= 0x80ffffff // small and subnormal magnitudes
				}
				src = binary.LittleEndian.AppendUint32(src, u)
			}
		}
		for _, q := range []QuantType{NF4, FP4} {
			want := make([]byte, len(src)/8)
			got := make([]byte, len(src)/8)
			for b := range rs {
				encodeBlock(want[b*bs/2:(b+1)*bs/2], f32sOf(src[4*b*bs:4*(b+1)*bs]), rs[b], tableFor(q))
			}
			encodeBlocks32SIMD(got, src, rs, bs, q)
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("%v: byte %d (block %d, r %g): vector %#02x, Go %#02x", q, i, i/(bs/2), rs[i/(bs/2)], got[i], want[i])
			}
		}
		for _, sbs := range validBlocksizes {
			nb := len(src) / (4 * sbs)
			st := make([]uint32, nb)
			blockStats32SIMD(st, src, sbs)
			for b := range nb {
				var mx uint32
				sub := false
				for i := range sbs {
					m := binary.LittleEndian.Uint32(src[4*(b*sbs+i):]) & 0x7fffffff
					mx = max(mx, m)
					sub = sub || m != 0 && m < 0x00800000
				}
				if sub {
					mx |= 1 << 31
				}
				if st[b] != mx {
					t.Fatalf("bs %d block %d: vector stats %#08x, want %#08x", sbs, b, st[b], mx)
				}
			}
		}
	})
}

// forEachEncoder runs f with the AVX2 encoders and, where the CPU has
// them, again with the AVX-512 ones (on a build without vector kernels,
// once with the portable code).
func forEachEncoder(t *testing.T, f func(t *testing.T)) {
	levels := []bool{false}
	if haveAVX512 {
		levels = append(levels, true)
	}
	for _, on := range levels {
		name := "avx2"
		if on {
			name = "avx512"
		}
		t.Run(name, func(t *testing.T) {
			defer setAVX512(on)()
			f(t)
		})
	}
}

// TestRcp16Tables checks the per-pattern reciprocal tables of the 16-bit
// fast path against rcpApprox, the emulation of the GPU's reciprocal, on
// every pattern they cover, and that they cover nothing else.
func TestRcp16Tables(t *testing.T) {
	bt, ft := bf16Rcp(), f16Rcp()
	for mx := range uint32(0x8000) {
		var want float32
		if mx >= 0x80 && mx < 0x7f80 {
			want = rcpApprox(math.Float32frombits(mx << 16))
		}
		if math.Float32bits(bt[mx]) != math.Float32bits(want) {
			t.Fatalf("BF16 pattern %#04x: table %g (%#08x), rcpApprox %g", mx, bt[mx], math.Float32bits(bt[mx]), want)
		}
		want = 0
		if mx >= 0x0400 && mx < 0x7c00 {
			want = rcpApprox(dtype.F16ToF32(uint16(mx))) * 0x1p112
		}
		if math.Float32bits(ft[mx]) != math.Float32bits(want) {
			t.Fatalf("F16 pattern %#04x: table %g, rcpApprox·2^112 %g", mx, ft[mx], want)
		}
	}
}

// setAVX512 selects the AVX-512 encoders (on) or the AVX2 ones and returns
// the function that restores the previous choice.
func setAVX512(on bool) (restore func()) {
	saved := useAVX512
	useAVX512 = on
	return func() { useAVX512 = saved }
}
