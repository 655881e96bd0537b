package bnb

import (
	"math"
	"sync"
)

// DoubleQuant compresses a tensor's absmax vector (one float32 per 4-bit
// block) the way bitsandbytes does with compress_statistics=True (spec §4):
// offset is the float32 mean of absmax as torch computes it on CUDA; the
// values absmax[i]-offset are quantized in blocks of NestedBlocksize to 8-bit
// codes of the signed dynamic map (DynamicMap), with the nested absmax of
// each block scaled by the GPU's approximate reciprocal and each code chosen
// by the CUDA kernel's binary search.
//
// codes has len(absmax) entries (the U8 "absmax" tensor of a double-quantized
// checkpoint), nestedAbsmax has NumBlocks(len(absmax), NestedBlocksize) and
// offset is the JSON "nested_offset".
func DoubleQuant(absmax []float32) (codes []byte, nestedAbsmax []float32, offset float32) {
	codes = make([]byte, len(absmax))
	nestedAbsmax = make([]float32, NumBlocks(int64(len(absmax)), NestedBlocksize))
	if len(absmax) == 0 {
		return codes, nestedAbsmax, 0
	}
	offset = cudaMeanF32(absmax)
	doubleQuantInto(codes, nestedAbsmax, absmax, offset)
	return codes, nestedAbsmax, offset
}

// DoubleQuantOffset is DoubleQuant with the offset given (the float32 mean
// of the whole tensor's absmax vector, CUDAMean): it writes the codes of
// absmax to codes[:len(absmax)] and the nested absmax of each block of
// NestedBlocksize values to nestedAbsmax[:NumBlocks(len(absmax),
// NestedBlocksize)]. Every nested block is independent of the others given
// the offset, so a tensor's vector can be double-quantized a piece at a
// time, by different goroutines, as long as every piece but the last
// starts and ends on a multiple of NestedBlocksize: the result is the same
// bytes as DoubleQuant of the whole vector. It panics if codes or
// nestedAbsmax is too short.
func DoubleQuantOffset(codes []byte, nestedAbsmax, absmax []float32, offset float32) {
	_ = codes[:len(absmax)]
	_ = nestedAbsmax[:NumBlocks(int64(len(absmax)), NestedBlocksize)]
	doubleQuantInto(codes, nestedAbsmax, absmax, offset)
}

// doubleQuantInto is DoubleQuant with a given offset. A block whose
// values (absmax - offset) are all finite, normal and non-zero, nearly
// every block, takes a fused path: the subtraction and the absmax in one
// loop, and codes without the checks that such values cannot need (the
// scaled values are then finite: |v| <= am and r is about 1/am). Other
// blocks go the general way (blockAbsmax, flushes, NaN keys); the test
// file keeps the general way alone and checks that both agree.
func doubleQuantInto(codes []byte, nestedAbsmax, absmax []float32, offset float32) {
	q8 := dynamicQuantizer()
	rcp := rcpTable()
	var buf [NestedBlocksize]float32
	for b := 0; len(absmax) > 0; b++ {
		n := min(NestedBlocksize, len(absmax))
		blk, src, out := buf[:n], absmax[:n], codes[:n]
		// Bit patterns shifted left by one, as in blockAbsmax: the
		// largest is the absmax (or a NaN above 0xff000000), the
		// smallest below 0x01000000 a zero or a subnormal.
		mx0, mx1 := uint32(0), uint32(0)
		mn0, mn1 := uint32(math.MaxUint32), uint32(math.MaxUint32)
		i := 0
		for ; i+1 < n; i += 2 {
			v0, v1 := src[i]-offset, src[i+1]-offset // torch's subtraction: IEEE, no flush
			blk[i], blk[i+1] = v0, v1
			k0, k1 := math.Float32bits(v0)<<1, math.Float32bits(v1)<<1
			mx0, mx1 = max(mx0, k0), max(mx1, k1)
			mn0, mn1 = min(mn0, k0), min(mn1, k1)
		}
		for ; i < n; i++ {
			v := src[i] - offset
			blk[i] = v
			k := math.Float32bits(v) << 1
			mx0, mn0 = max(mx0, k), min(mn0, k)
		}
		absmax, codes = absmax[n:], codes[n:]
		mx, mn := max(mx0, mx1), min(mn0, mn1)
		if mx >= 0xff000000 || mn < 0x01000000 {
			// A NaN, an infinity, a zero or a subnormal.
			am, _ := blockAbsmax(blk)
			nestedAbsmax[b] = am
			r := rcpApproxT(rcp, am)
			for i, v := range blk {
				out[i] = q8.quantize(ftz(ftz(v) * r))
			}
			continue
		}
		am := math.Float32frombits(mx >> 1)
		nestedAbsmax[b] = am
		r := rcpApproxT(rcp, am)
		if !dq8SIMD(out, blk, r, q8) {
			for i, v := range blk {
				out[i] = q8.quantizeFinite(ftz(v * r))
			}
		}
	}
}

// quantizer8 selects 8-bit codes of the dynamic map exactly as the CUDA
// kernel's dQuantize<0> (a fixed seven-step binary search over the sorted
// 256-entry map, then a choice between the final pivot and its neighbour by
// their float32 midpoint), without its unpredictable branches.
//
// The kernel's search visits odd indices only and, the map being sorted,
// ends at the even pivot p = 2k, where k is the number of odd entries below
// s; its bounds are then p-1 and p+1 (p alone at 0). It returns p+1 if
// s > code[p] and s > mid[p], p-1 if s <= code[p], p > 0 and s < mid[p-1],
// and p otherwise, mid[i] being f32((code[i]+code[i+1])*0.5). As
// code[p-1] <= mid[p-1] <= code[p] <= mid[p], that is
// p + [s > mid[p]] - [s < mid[p-1]]: a value on a midpoint goes to the even
// neighbour, and NaN to 0. The test file keeps the literal search and checks
// that the two agree on all 2^32 inputs.
//
// Comparisons run on order-preserving integer keys (see orderKey), which the
// compiler turns into conditional moves.
//
// The code is a non-decreasing function of the key (checked on all 2^32
// inputs), and each of its 255 steps lies in a different run of 2^16 keys
// of the same top 16 bits. quantize therefore looks the code up by those
// 16 bits (lut) and compares the low 16 bits with the one step the run may
// hold; search is the seven-step search that the table is built from.
type quantizer8 struct {
	odd [128]uint32 // key of code[2i+1]; odd[127] is above every key
	mid [256]uint32 // key of mid[i]; mid[255] = 0, below every key
	// lut[key>>16] is c<<24 | t: keys of those top 16 bits get code c
	// below low 16 bits t and c+1 from t on (t = 1<<16: no step).
	lut [1 << 16]uint32
}

// orderKey maps a float32 to a uint32 whose unsigned order is the float
// order (with -0 just below +0, which no comparison here can tell apart
// since the map holds +0 only and no midpoint is zero). NaN maps to 0, below
// everything, so that it gets code 0 as on the GPU.
func orderKey(f float32) uint32 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return 0
	}
	return u ^ (uint32(int32(u)>>31) | 0x80000000)
}

var dynamicQuantizer = sync.OnceValue(func() *quantizer8 {
	code := DynamicMap()
	q := new(quantizer8)
	for i := 0; i < 255; i++ {
		q.mid[i] = orderKey(ftz((code[i] + code[i+1]) * 0.5))
	}
	for i := 0; i < 127; i++ {
		q.odd[i] = orderKey(code[2*i+1])
	}
	q.odd[127] = math.MaxUint32
	q.buildLUT()
	return q
})

// fromKey is the float32 whose orderKey is key (for keys of non-NaN values).
func fromKey(key uint32) float32 {
	if key&0x80000000 != 0 {
		return math.Float32frombits(key ^ 0x80000000)
	}
	return math.Float32frombits(^key)
}

// buildLUT fills lut from search: it finds the first key of each code by
// bisection over the keys of non-NaN values (those from -Inf to +Inf, on
// which search is non-decreasing) and panics if two steps share a run of
// 2^16 keys, which the dynamic map rules out.
func (q *quantizer8) buildLUT() {
	const lo, hi = 0x007fffff, 0xff800000 // orderKey(-Inf), orderKey(+Inf)
	code := func(key uint32) byte { return q.search(fromKey(key)) }
	for i := range q.lut {
		q.lut[i] = 1 << 16
	}
	base := code(lo)
	for c := int(base) + 1; c <= int(code(hi)); c++ {
		// First key in [lo, hi] with code >= c.
		a, b := uint32(lo), uint32(hi)
		for a < b {
			m := a + (b-a)/2
			if int(code(m)) >= c {
				b = m
			} else {
				a = m + 1
			}
		}
		if q.lut[a>>16] != 1<<16 {
			panic("bnb: two codes of the dynamic map begin in one run of 2^16 keys")
		}
		q.lut[a>>16] = uint32(c-1)<<24 | a&0xffff
	}
	// Runs without a step get the code of their first key; NaN (key 0)
	// gets code 0.
	cur := uint32(0)
	for i := range q.lut {
		if i<<16 >= lo {
			cur = uint32(code(max(uint32(i)<<16, lo)))
		}
		if i<<16 > hi {
			cur = 0
		}
		if q.lut[i] == 1<<16 {
			q.lut[i] |= cur << 24
		}
	}
}

func (q *quantizer8) quantize(s float32) byte {
	key := orderKey(s)
	e := q.lut[key>>16]
	return byte(e>>24) + 1 - gt(e&0x1ffff, key&0xffff)
}

// quantizeFinite is quantize for a finite s (not a NaN).
func (q *quantizer8) quantizeFinite(s float32) byte {
	u := math.Float32bits(s)
	key := u ^ (uint32(int32(u)>>31) | 0x80000000) // orderKey without its NaN case
	e := q.lut[key>>16]
	return byte(e>>24) + 1 - gt(e&0x1ffff, key&0xffff)
}

// search is quantize by the kernel's search (see quantizer8).
func (q *quantizer8) search(s float32) byte {
	key := orderKey(s)
	// k = number of odd entries below s, one bit per step, unrolled so that
	// every comparison becomes a SETcc.
	k := gt(key, q.odd[63]) << 6
	k |= gt(key, q.odd[(k+31)&127]) << 5
	k |= gt(key, q.odd[(k+15)&127]) << 4
	k |= gt(key, q.odd[(k+7)&127]) << 3
	k |= gt(key, q.odd[(k+3)&127]) << 2
	k |= gt(key, q.odd[(k+1)&127]) << 1
	k |= gt(key, q.odd[k&127])
	p := 2 * k
	// p-1 wraps to 255 for p = 0, where mid is 0 and nothing is below it.
	return p + gt(key, q.mid[p]) - gt(q.mid[p-1], key)
}

// gt is 1 if a > b, else 0.
func gt(a, b uint32) uint8 {
	if a > b {
		return 1
	}
	return 0
}

// UndoDoubleQuant recovers the float32 absmax vector from double-quantized
// statistics quantized with the canonical nested map, DynamicMap(). It is
// UndoDoubleQuantMap with nestedMap = DynamicMap(); see there. Checkpoints
// carry their own nested_quant_map, which may differ (see
// UndoDoubleQuantMap): readers of stored checkpoints should pass it.
func UndoDoubleQuant(dst []float32, codes []byte, nestedAbsmax []float32, offset float32) {
	dm := DynamicMap()
	UndoDoubleQuantMap(dst, codes, nestedAbsmax, &dm, offset)
}

// UndoDoubleQuantMap recovers the float32 absmax vector from
// double-quantized statistics as bitsandbytes' dequantize_4bit does (spec
// §4.3), looking codes up in nestedMap, the checkpoint's stored
// nested_quant_map:
// dst[i] = (nestedMap[codes[i]] * nestedAbsmax[i/NestedBlocksize]) + offset,
// each operation rounded to float32 (the product on the GPU, flushing
// subnormals). bitsandbytes dequantizes with the stored map, which is not
// always DynamicMap(): checkpoints made on the CPU by bitsandbytes 0.42-0.49
// may carry nestedMap[0] = -1.0.
//
// dst must have len(codes) entries and nestedAbsmax
// NumBlocks(len(codes), NestedBlocksize); UndoDoubleQuantMap panics
// otherwise. It does not allocate.
func UndoDoubleQuantMap(dst []float32, codes []byte, nestedAbsmax []float32, nestedMap *[256]float32, offset float32) {
	if len(dst) < len(codes) || int64(len(nestedAbsmax)) < NumBlocks(int64(len(codes)), NestedBlocksize) {
		panic("bnb: UndoDoubleQuant: dst or nestedAbsmax too short")
	}
	for b := 0; len(codes) > 0; b++ {
		blk := codes[:min(NestedBlocksize, len(codes))]
		codes = codes[len(blk):]
		out := dst[:len(blk)]
		dst = dst[len(blk):]
		na := nestedAbsmax[b]
		for i, c := range blk {
			out[i] = ftz(nestedMap[c]*na) + offset
		}
	}
}

// DequantizeBlocks expands n = len(dst) packed 4-bit codes of type q to
// float32 as bitsandbytes' CUDA dequantize_4bit does: dst[i] =
// CodeBook(q)[code i] * absmax[i/blocksize], rounded to float32 with
// subnormal results flushed, except that FP4 code 8 gives -0 (the CUDA
// kernel applies the sign bit itself; only the stored quant_map has +0). bitsandbytes then rounds to the quant state's
// dtype; callers that need its exact bf16/f16 output round dst with
// formats/dtype (round to nearest even).
//
// packed must hold PackedBytes(n) bytes and absmax NumBlocks(n, blocksize)
// values; DequantizeBlocks panics otherwise or if q or blocksize is invalid.
func DequantizeBlocks(dst []float32, packed []byte, absmax []float32, blocksize int, q QuantType) {
	if !q.Valid() || !ValidBlocksize(blocksize) {
		panic("bnb: DequantizeBlocks: invalid quant type or blocksize")
	}
	n := int64(len(dst))
	if int64(len(packed)) < PackedBytes(n) || int64(len(absmax)) < NumBlocks(n, blocksize) {
		panic("bnb: DequantizeBlocks: packed or absmax too short")
	}
	cb := CodeBook(q)
	if q == FP4 {
		cb[8] = float32(math.Copysign(0, -1))
	}
	var lut [16]float32
	for b := 0; len(dst) > 0; b++ {
		out := dst[:min(blocksize, len(dst))]
		dst = dst[len(out):]
		for i, c := range cb {
			lut[i] = ftz(c * absmax[b])
		}
		in := packed[:(len(out)+1)/2]
		packed = packed[len(in):]
		n2 := len(out) &^ 1
		for i := 0; i < n2; i += 2 {
			v := in[i/2]
			o := out[i : i+2 : i+2]
			o[0], o[1] = lut[v>>4], lut[v&15]
		}
		if len(out) > n2 {
			out[n2] = lut[in[n2/2]>>4]
		}
	}
}
