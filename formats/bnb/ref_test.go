package bnb

import (
	"bytes"
	"compress/gzip"
	"flag"
	"io"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
)

// This file holds a deliberately plain reference implementation of the
// CUDA quantizer, written independently of the fast path: the code choice
// is the kernels' decision trees with the decimal literals of kernels.cu
// (a Go constant conversion rounds a decimal directly to float32, as the
// CUDA compiler does), absmax uses float comparisons, and the reciprocal
// table is read from the embedded file as plain int8.

var exhaustive = flag.Bool("bnb.exhaustive", false, "check the code tables against the decision trees for all 2^32 float32 bit patterns")

var refRcpTable = sync.OnceValue(func() []int8 {
	zr, err := gzip.NewReader(bytes.NewReader(rcpTableGz))
	if err != nil {
		panic(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		panic(err)
	}
	out := make([]int8, len(b))
	for i, v := range b {
		out[i] = int8(v)
	}
	return out
})

func refFTZ(x float32) float32 {
	if x != 0 && math.Abs(float64(x)) < 0x1p-126 {
		return float32(math.Copysign(0, float64(x)))
	}
	return x
}

func refRcp(x float32) float32 {
	x = refFTZ(x)
	switch {
	case math.IsNaN(float64(x)):
		return x
	case x == 0:
		return float32(math.Copysign(math.Inf(1), float64(x)))
	case math.IsInf(float64(x), 0):
		return float32(math.Copysign(0, float64(x)))
	}
	y := refFTZ(1 / x)
	if y == 0 {
		return y
	}
	d := refRcpTable()[math.Float32bits(x)&(1<<23-1)]
	return math.Float32frombits(uint32(int64(math.Float32bits(y)) + int64(d)))
}

// refNF4 is dQuantizeNF4 of csrc/kernels.cu.
func refNF4(x float32) byte {
	if x > 0.03979014977812767 {
		if x > 0.3893125355243683 {
			if x > 0.6427869200706482 {
				if x > 0.8614784181118011 {
					return 0b1111
				}
				return 0b1110
			}
			if x > 0.5016634166240692 {
				return 0b1101
			}
			return 0b1100
		}
		if x > 0.2035212516784668 {
			if x > 0.2920137718319893 {
				return 0b1011
			}
			return 0b1010
		}
		if x > 0.1202552504837513 {
			return 0b1001
		}
		return 0b1000
	}
	if x > -0.33967943489551544 {
		if x > -0.13791173323988914 {
			if x > -0.045525018125772476 {
				return 0b0111
			}
			return 0b0110
		}
		if x > -0.23460740596055984 {
			return 0b0101
		}
		return 0b0100
	}
	if x > -0.6106329262256622 {
		if x > -0.4599952697753906 {
			return 0b0011
		}
		return 0b0010
	}
	if x > -0.8480964004993439 {
		return 0b0001
	}
	return 0b0000
}

// refFP4 is dQuantizeFP4 of csrc/kernels.cu.
func refFP4(x float32) byte {
	var sign byte
	if x < 0 {
		sign = 0b1000
	}
	x = float32(math.Abs(float64(x)))
	if x > 0.29166667 {
		if x > 0.583333 {
			if x > 0.8333333 {
				return 0b0011 + sign
			}
			return 0b0010 + sign
		}
		if x > 0.4166667 {
			return 0b0101 + sign
		}
		return 0b0100 + sign
	}
	if x > 0.0859375 {
		if x > 0.20833333 {
			return 0b0111 + sign
		}
		return 0b0110 + sign
	}
	if x > 0.00260417 {
		return 0b0001 + sign
	}
	return 0b0000 + sign
}

func refCode(q QuantType, s float32) byte {
	s = refFTZ(s)
	if q == NF4 {
		return refNF4(s)
	}
	return refFP4(s)
}

// refQuantize is kQuantizeBlockwise written out plainly.
func refQuantize(src []float32, bs int, q QuantType) (packed []byte, absmax []float32) {
	var codes []byte
	for b0 := 0; b0 < len(src); b0 += bs {
		blk := src[b0:min(b0+bs, len(src))]
		am := float32(-math.MaxFloat32)
		for _, x := range blk {
			a := float32(math.Abs(float64(refFTZ(x))))
			if a > am { // fmaxf: a NaN never wins
				am = a
			}
		}
		absmax = append(absmax, am)
		r := refRcp(am)
		for _, x := range blk {
			codes = append(codes, refCode(q, refFTZ(x)*r))
		}
		if len(codes)%2 == 1 && b0+bs >= len(src) {
			var zero float32
			codes = append(codes, refCode(q, zero*r))
		}
	}
	for i := 0; i < len(codes); i += 2 {
		packed = append(packed, codes[i]<<4|codes[i+1])
	}
	return packed, absmax
}

func TestThresholdsMatchKernelLiterals(t *testing.T) {
	// The hex thresholds of the fast path must be the literals of the trees.
	for _, tc := range []struct {
		q    QuantType
		bits []uint32
	}{{NF4, nf4ThresholdBits[:]}, {FP4, fp4ThresholdBits[:]}} {
		for _, b := range tc.bits {
			for _, u := range []uint32{b - 1, b, b + 1} {
				s := math.Float32frombits(u)
				if got, want := scalarCode(tc.q, s), refCode(tc.q, s); got != want {
					t.Errorf("%v: scalarCode(%#08x) = %d, tree says %d", tc.q, u, got, want)
				}
				if got, want := scalarCode(tc.q, -s), refCode(tc.q, -s); got != want {
					t.Errorf("%v: scalarCode(-%#08x) = %d, tree says %d", tc.q, u, got, want)
				}
			}
		}
	}
}

// TestCodeTable checks the bucket table against the decision trees at every
// bucket edge, around every threshold, and at random bit patterns; with
// -bnb.exhaustive, at all 2^32 bit patterns.
func TestCodeTable(t *testing.T) {
	for _, q := range []QuantType{NF4, FP4} {
		tab := tableFor(q)
		check := func(u uint32) {
			if got, want := tab.lookup(u), refCode(q, math.Float32frombits(u)); got != want {
				t.Fatalf("%v: code(%#08x) = %d, want %d", q, u, got, want)
			}
		}
		for k := uint32(0); k < 1<<16; k++ {
			check(k << 16)
			check(k<<16 | 0xffff)
			if (tab.entry[k]-k<<16)&0xffff != 0xffff { // a bucket with a threshold: all of it
				for m := uint32(0); m < 1<<16; m++ {
					check(k<<16 | m)
				}
			}
		}
		rng := rand.New(rand.NewPCG(1, uint64(q)))
		for range 1 << 20 {
			check(rng.Uint32())
		}
		if *exhaustive {
			exhaustiveCheck(t, q)
		}
	}
}

func exhaustiveCheck(t *testing.T, q QuantType) {
	tab := tableFor(q)
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	bad := make([]int64, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for hi := uint32(w); hi < 1<<16; hi += uint32(workers) {
				for lo := uint32(0); lo < 1<<16; lo++ {
					u := hi<<16 | lo
					if tab.lookup(u) != refCode(q, math.Float32frombits(u)) {
						bad[w]++
					}
				}
			}
		}()
	}
	wg.Wait()
	for _, b := range bad {
		if b != 0 {
			t.Fatalf("%v: %v mismatches over all 2^32 patterns", q, bad)
		}
	}
	t.Logf("%v: all 2^32 bit patterns agree", q)
}

func TestRcpTable(t *testing.T) {
	ref := refRcpTable()
	if len(ref) != 1<<23 {
		t.Fatalf("table has %d entries", len(ref))
	}
	tab := rcpTable()
	nonzero := 0
	for m, d := range ref {
		if got := rcpDelta(tab, uint32(m)); got != int32(d) {
			t.Fatalf("entry %d: %d, want %d", m, got, d)
		}
		if d != 0 {
			nonzero++
		}
	}
	// The spec (§2.3) counts 1,108,522 mantissas where MUFU.RCP is not
	// correctly rounded.
	if nonzero != 1108522 {
		t.Errorf("%d non-zero entries, want 1108522", nonzero)
	}
	for _, x := range []float32{1, 2, 0.5, 3, 1e-3, 7.5e-5, 65504, 1e30, 1e-37, float32(math.Inf(1)), 0, 1e-40, float32(math.Copysign(0, -1)), -3} {
		got, want := rcpApprox(x), refRcp(x)
		if math.Float32bits(got) != math.Float32bits(want) {
			t.Errorf("rcpApprox(%g) = %g, want %g", x, got, want)
		}
	}
	if r := rcpApprox(1); r != 1 {
		t.Errorf("rcpApprox(1) = %g", r)
	}
}

// specialValues are inputs that exercise every edge of the kernel.
func specialValues() []float32 {
	nan := math.Float32frombits(0x7fc00000)
	v := []float32{
		0, float32(math.Copysign(0, -1)), 1, -1, nan, -nan, math.Float32frombits(0x7f800001), math.Float32frombits(0xffbfffff),
		float32(math.Inf(1)), float32(math.Inf(-1)), math.MaxFloat32, -math.MaxFloat32,
		0x1p-126, -0x1p-126, 0x1p-149, -0x1p-149, 0x1.fffffcp-127, -0x1.fffffcp-127, 1e-30, -1e-30, 1e-6, -1e-6,
		65504, -65504, 0.5, -0.5,
	}
	for _, b := range append(nf4ThresholdBits[:], fp4ThresholdBits[:]...) {
		for _, u := range []uint32{b - 1, b, b + 1} {
			f := math.Float32frombits(u)
			v = append(v, f, -f)
		}
	}
	return v
}

func TestQuantizeMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	special := specialValues()
	gen := func(n int, mode int) []float32 {
		x := make([]float32, n)
		scale := float32(math.Ldexp(1, rng.IntN(60)-40))
		for i := range x {
			switch {
			case mode == 0:
				x[i] = float32(rng.NormFloat64()) * scale
			case mode == 1 || rng.IntN(4) == 0:
				x[i] = special[rng.IntN(len(special))]
			case mode == 2:
				x[i] = math.Float32frombits(rng.Uint32())
			default:
				x[i] = float32(rng.NormFloat64()) * scale
			}
		}
		if mode == 1 && n > 0 && rng.IntN(2) == 0 {
			x[0] = 1 // absmax 1: the special values are then scaled exactly
		}
		return x
	}
	for iter := range 3000 {
		q := QuantType(1 + iter%2)
		bs := validBlocksizes[rng.IntN(len(validBlocksizes))]
		n := rng.IntN(3*bs + 2)
		if iter%7 == 0 {
			n = rng.IntN(5)
		}
		src := gen(n, iter%4)
		wantP, wantA := refQuantize(src, bs, q)
		gotP := make([]byte, PackedBytes(int64(n)))
		gotA := make([]float32, NumBlocks(int64(n), bs))
		QuantizeBlocks(gotP, gotA, src, bs, q)
		if !bytes.Equal(gotP, wantP) || !bytes.Equal(f32Bytes(gotA), f32Bytes(wantA)) {
			t.Fatalf("iter %d (%v, bs %d, n %d): fast path differs from reference\n src %v\n got %x %v\nwant %x %v",
				iter, q, bs, n, src, gotP, gotA, wantP, wantA)
		}
	}
}

// TestQuantizeSpecialBlocks pins the CUDA behaviour of spec §2.6 on
// hand-made blocks.
func TestQuantizeSpecialBlocks(t *testing.T) {
	nan := float32(math.NaN())
	inf := float32(math.Inf(1))
	for _, tc := range []struct {
		name   string
		q      QuantType
		src    []float32
		packed []byte
		absmax float32
	}{
		{"nf4 all zero", NF4, []float32{0, 0, 0, 0}, []byte{0x00, 0x00}, 0},
		{"fp4 all zero", FP4, []float32{0, 0, 0, 0}, []byte{0x00, 0x00}, 0},
		{"nf4 NaN ignored", NF4, []float32{nan, 1, -1, 0}, []byte{0x0f, 0x07}, 1},
		{"fp4 NaN ignored", FP4, []float32{nan, 1, -1, 0}, []byte{0x03, 0xb0}, 1},
		{"nf4 inf", NF4, []float32{inf, 1, -1, 0}, []byte{0x07, 0x77}, inf},
		{"fp4 inf", FP4, []float32{inf, 1, -1, 0}, []byte{0x00, 0x00}, inf},
		{"fp4 tiny negative", FP4, []float32{1, -1e-6, float32(math.Copysign(0, -1)), 0}, []byte{0x38, 0x00}, 1},
		{"nf4 odd tail", NF4, []float32{1, -1, 0.5}, []byte{0xf0, 0xc7}, 1},
		{"fp4 odd tail", FP4, []float32{1, -1, 0.5}, []byte{0x3b, 0x50}, 1},
		{"nf4 odd all-zero tail", NF4, []float32{0}, []byte{0x00}, 0},
		{"nf4 subnormal flushed", NF4, []float32{2e-38, 1e-39, -1e-39, 0}, []byte{0xf7, 0x77}, 2e-38},
		{"fp4 subnormal-only block", FP4, []float32{1e-40, -1e-40, 0, 0}, []byte{0x00, 0x00}, 0},
	} {
		packed := make([]byte, PackedBytes(int64(len(tc.src))))
		absmax := make([]float32, 1)
		QuantizeBlocks(packed, absmax, tc.src, 64, tc.q)
		if !bytes.Equal(packed, tc.packed) || math.Float32bits(absmax[0]) != math.Float32bits(tc.absmax) {
			t.Errorf("%s: got %x absmax %g, want %x absmax %g", tc.name, packed, absmax[0], tc.packed, tc.absmax)
		}
		wantP, _ := refQuantize(tc.src, 64, tc.q)
		if !bytes.Equal(packed, wantP) {
			t.Errorf("%s: reference gives %x", tc.name, wantP)
		}
	}
	// An all-NaN block keeps fmaxf's starting value.
	absmax := make([]float32, 1)
	QuantizeBlocks(make([]byte, 1), absmax, []float32{nan, nan}, 32, NF4)
	if absmax[0] != -math.MaxFloat32 {
		t.Errorf("all-NaN block: absmax %g, want -MaxFloat32", absmax[0])
	}
}

// FuzzQuantizeBlocks compares the fast path with the reference on
// arbitrary bit patterns. The seeds are the golden inputs' first bytes and
// the special values.
func FuzzQuantizeBlocks(f *testing.F) {
	f.Add(f32Bytes(specialValues()), uint8(1), false)
	f.Add(f32Bytes([]float32{1, 0.5, -0.25, 0}), uint8(0), true)
	f.Fuzz(func(t *testing.T, raw []byte, bsIdx uint8, fp4 bool) {
		src := make([]float32, len(raw)/4)
		for i := range src {
			src[i] = math.Float32frombits(uint32(raw[4*i]) | uint32(raw[4*i+1])<<8 | uint32(raw[4*i+2])<<16 | uint32(raw[4*i+3])<<24)
		}
		q := NF4
		if fp4 {
			q = FP4
		}
		bs := validBlocksizes[int(bsIdx)%len(validBlocksizes)]
		wantP, wantA := refQuantize(src, bs, q)
		gotP := make([]byte, PackedBytes(int64(len(src))))
		gotA := make([]float32, NumBlocks(int64(len(src)), bs))
		QuantizeBlocks(gotP, gotA, src, bs, q)
		if !bytes.Equal(gotP, wantP) || !bytes.Equal(f32Bytes(gotA), f32Bytes(wantA)) {
			t.Fatalf("%v bs %d: got %x %v, want %x %v", q, bs, gotP, gotA, wantP, wantA)
		}
	})
}

// refQuantize8 is the CUDA kernel's dQuantize<0> written out literally.
func refQuantize8(code *[256]float32, s float32) byte {
	pivot, upperP, lowerP := 127, 255, 0
	lower, upper := float32(-1), float32(1)
	val := code[pivot]
	for step := 64; step > 0; step >>= 1 {
		if s > val {
			lowerP, lower = pivot, val
			pivot += step
		} else {
			upperP, upper = pivot, val
			pivot -= step
		}
		val = code[pivot]
	}
	if upperP == 255 {
		upper = code[255]
	}
	if lowerP == 0 {
		lower = code[0]
	}
	if s > val {
		if s > (upper+val)*0.5 {
			return byte(upperP)
		}
		return byte(pivot)
	}
	if s < (lower+val)*0.5 {
		return byte(lowerP)
	}
	return byte(pivot)
}

func TestQuantize8MatchesKernelSearch(t *testing.T) {
	q := dynamicQuantizer()
	code := DynamicMap()
	check := func(s float32) {
		if got, want := q.quantize(s), refQuantize8(&code, s); got != want {
			t.Fatalf("quantize(%g = %#08x) = %d, kernel search gives %d", s, math.Float32bits(s), got, want)
		}
	}
	var mids []float32
	for i := 0; i < 255; i++ {
		mids = append(mids, (code[i]+code[i+1])*0.5)
	}
	for _, v := range append(code[:], mids...) {
		u := math.Float32bits(v)
		for d := uint32(0); d < 3; d++ {
			check(math.Float32frombits(u + d))
			check(math.Float32frombits(u - d))
		}
	}
	for _, v := range specialValues() {
		check(v)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 1 << 20 {
		check(float32(rng.Float64()*2.2 - 1.1))
		check(math.Float32frombits(rng.Uint32()))
	}
	if *exhaustive {
		for u := uint64(0); u < 1<<32; u++ {
			check(math.Float32frombits(uint32(u)))
		}
		t.Log("quantize8: all 2^32 bit patterns agree")
	}
}

// TestDecodeRcpTableRejects checks that decodeRcpTable decodes every entry
// value at every position of a byte and refuses tables of the wrong length
// or with an entry other than -1, 0 and +1.
func TestDecodeRcpTableRejects(t *testing.T) {
	gz := func(raw []byte) []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(raw)
		zw.Close()
		return b.Bytes()
	}
	raw := make([]byte, rcpTableLen)
	for i := range raw {
		raw[i] = byte(int8(i*7%3 - 1)) // -1, 0, +1 in every position
	}
	tab, err := decodeRcpTable(gz(raw))
	if err != nil {
		t.Fatal(err)
	}
	for m, b := range raw {
		if got := rcpDelta(tab, uint32(m)); got != int32(int8(b)) {
			t.Fatalf("entry %d: %d, want %d", m, got, int8(b))
		}
	}
	bad := bytes.Clone(raw)
	bad[rcpTableLen-3] = 2
	for name, in := range map[string][]byte{
		"entry out of range": bad,
		"shorter":            raw[:rcpTableLen-1],
		"longer":             append(bytes.Clone(raw), 0),
	} {
		if _, err := decodeRcpTable(gz(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := decodeRcpTable(gz(raw)[:1000]); err == nil {
		t.Error("truncated gzip stream: no error")
	}
}

// doubleQuantRef is doubleQuantInto without its fused path: every block
// the general way.
func doubleQuantRef(codes []byte, nestedAbsmax, absmax []float32, offset float32) {
	q8 := dynamicQuantizer()
	rcp := rcpTable()
	for b := 0; len(absmax) > 0; b++ {
		blk := make([]float32, min(NestedBlocksize, len(absmax)))
		for i := range blk {
			blk[i] = absmax[i] - offset
		}
		absmax = absmax[len(blk):]
		am, _ := blockAbsmax(blk)
		nestedAbsmax[b] = am
		r := rcpApproxT(rcp, am)
		for i, v := range blk {
			codes[i] = q8.quantize(ftz(ftz(v) * r))
		}
		codes = codes[len(blk):]
	}
}

// TestDoubleQuantFusedPath checks doubleQuantInto against doubleQuantRef
// on blocks that take the fused path and blocks that must not: values
// equal to the offset (zeros), differences that are subnormal, NaN and
// infinite values, huge and tiny scales, and vectors of every length
// around the nested block size.
func TestDoubleQuantFusedPath(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	specials := []float32{0, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 1e-40, -1e-40, math.MaxFloat32, math.SmallestNonzeroFloat32, 1e-38}
	for trial := range 400 {
		n := []int{1, 2, 255, 256, 257, 511, 512, 1000, 4096}[trial%9]
		scale := []float32{0.01, 1, 1e-30, 1e30, 1e-36}[rng.IntN(5)]
		absmax := make([]float32, n)
		for i := range absmax {
			absmax[i] = scale * float32(rng.ExpFloat64())
		}
		offset := cudaMeanF32(absmax)
		switch trial % 5 {
		case 1: // some values equal to the offset: zero differences
			for range 1 + rng.IntN(3) {
				absmax[rng.IntN(n)] = offset
			}
		case 2: // subnormal differences
			absmax[rng.IntN(n)] = offset + 1e-40
		case 3: // specials anywhere
			for range 1 + rng.IntN(3) {
				absmax[rng.IntN(n)] = specials[rng.IntN(len(specials))]
			}
		case 4: // a special offset
			offset = specials[rng.IntN(len(specials))]
		}
		nb := (n + NestedBlocksize - 1) / NestedBlocksize
		got, want := make([]byte, n), make([]byte, n)
		gotN, wantN := make([]float32, nb), make([]float32, nb)
		doubleQuantInto(got, gotN, absmax, offset)
		doubleQuantRef(want, wantN, absmax, offset)
		if !bytes.Equal(got, want) {
			t.Fatalf("trial %d (n %d, scale %g, offset %g): codes differ", trial, n, scale, offset)
		}
		for i := range gotN {
			if math.Float32bits(gotN[i]) != math.Float32bits(wantN[i]) {
				t.Fatalf("trial %d: nested absmax %d: %g, want %g", trial, i, gotN[i], wantN[i])
			}
		}
	}
}

// TestDQ8SIMD checks the vector code selection of double quantization
// against the kernel's literal search (not the table the vector kernel
// reads): with r = 1 on the keys at and next to every step of the map
// and on random finite values, and with random reciprocals, including
// products that flush to zero; lengths that are not multiples of 16 take
// the scalar tail.
func TestDQ8SIMD(t *testing.T) {
	if !haveAVX512 {
		t.Skip("no AVX-512 on this CPU or build")
	}
	q := dynamicQuantizer()
	var vals []float32
	for i, e := range q.lut {
		if st := e & 0x1ffff; st < 1<<16 {
			for d := -2; d <= 2; d++ {
				key := uint32(i)<<16 | st
				key = uint32(int64(key) + int64(d))
				if key >= 0x007fffff && key <= 0xff800000 && key != 0x007fffff && key != 0xff800000 {
					vals = append(vals, fromKey(key))
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for range 1 << 16 {
		u := rng.Uint32()
		if u&0x7f800000 == 0x7f800000 {
			continue // no infinities or NaNs: the finite path only
		}
		vals = append(vals, math.Float32frombits(u))
	}
	vals = append(vals, 0, float32(math.Copysign(0, -1)), 1e-40, -1e-40, 1, -1, math.MaxFloat32, -math.MaxFloat32)
	check := func(name string, src []float32, r float32) {
		t.Helper()
		got := make([]byte, len(src))
		if !dq8SIMD(got, src, r, q) {
			t.Fatal("dq8SIMD declined on an AVX-512 CPU")
		}
		for i, v := range src {
			if want := q.search(ftz(v * r)); got[i] != want {
				t.Fatalf("%s: value %g (%#08x) · r %g: code %d, want %d", name, v, math.Float32bits(v), r, got[i], want)
			}
		}
	}
	check("r=1", vals, 1)
	check("r=1, odd length", vals[:len(vals)-5], 1)
	for range 200 {
		r := float32(math.Ldexp(1+rng.Float64(), rng.IntN(80)-40))
		n := rng.IntN(300)
		src := make([]float32, n)
		for i := range src {
			src[i] = float32(rng.NormFloat64()) / r
			if rng.IntN(50) == 0 {
				src[i] = float32(math.Ldexp(rng.Float64(), -140)) // flushes
			}
		}
		check("random r", src, r)
	}
}
