package bnb

import (
	"math"
	"sync"
)

// Code-selection thresholds of the CUDA kernels (csrc/kernels.cu
// dQuantizeNF4, dQuantizeFP4), as the float32 values the compiler makes of
// the decimal literals (spec §2.4). A scaled value s selects the code
// "number of thresholds t with s > t" (strict), which is what the kernels'
// decision trees compute.
var (
	nf4ThresholdBits = [15]uint32{
		0xbf591cd9, 0xbf1c5270, 0xbeeb8480, 0xbeadea76, 0xbe703cec, 0xbe0d38bc, 0xbd3a7871,
		0x3d22faff, 0x3df64863, 0x3e5067e0, 0x3e9582d4, 0x3ec753f9, 0x3f006d03, 0x3f248daf, 0x3f5c89d9,
	}
	fp4ThresholdBits = [7]uint32{
		0x3b2aaab9, 0x3db00000, 0x3e555555, 0x3e955555, 0x3ed55556, 0x3f155550, 0x3f555555,
	}
	// fp4RankCode maps the number of FP4 thresholds below |s| to the low three
	// bits of the FP4 code.
	fp4RankCode = [8]byte{0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011}
)

// ftz flushes a subnormal float32 to a zero of the same sign, as the GPU
// does for every operand and result under --use_fast_math.
func ftz(x float32) float32 {
	u := math.Float32bits(x)
	if u&0x7f800000 == 0 {
		return math.Float32frombits(u & 0x80000000)
	}
	return x
}

// scalarCode is the 4-bit code the CUDA kernel selects for a scaled value s
// (already rounded to float32; subnormals are flushed). NaN selects code 0
// for both types. It is the slow, obvious definition; the kernels use
// codeTable, which is built from it.
func scalarCode(q QuantType, s float32) byte {
	s = ftz(s)
	var c byte
	if q == NF4 {
		for _, t := range nf4ThresholdBits {
			if s > math.Float32frombits(t) {
				c++
			}
		}
		return c
	}
	var sign byte
	if s < 0 {
		sign = 8
	}
	a := float32(math.Abs(float64(s)))
	for _, t := range fp4ThresholdBits {
		if a > math.Float32frombits(t) {
			c++
		}
	}
	return fp4RankCode[c] | sign
}

// A codeTable maps the top 16 bits of a scaled value's bit pattern u (sign,
// exponent and 7 mantissa bits) to an entry e. Within one such bucket at most
// one threshold lies, so the code is byte(e>>32) if u <= uint32(e) and
// byte(e>>40) if u > uint32(e). Comparing raw bit patterns as unsigned
// integers orders values by magnitude within a bucket, which is what makes
// this work on the negative side too; NaN, ±Inf and subnormal buckets are
// covered like any other.
type codeTable [1 << 16]uint64

var codeTables = sync.OnceValue(func() *[2]codeTable {
	t := new([2]codeTable)
	buildCodeTable(&t[0], NF4)
	buildCodeTable(&t[1], FP4)
	return t
})

func tableFor(q QuantType) *codeTable {
	return &codeTables()[q-NF4]
}

// buildCodeTable fills t from scalarCode. For each bucket it compares the
// codes at both ends; where they differ it binary-searches the first bit
// pattern of the upper code. The golden and exhaustive tests check that no
// bucket holds two code changes.
func buildCodeTable(t *codeTable, q QuantType) {
	codeAt := func(u uint32) byte { return scalarCode(q, math.Float32frombits(u)) }
	for k := range t {
		lo := uint32(k) << 16
		hi := lo | 0xffff
		cl, ch := codeAt(lo), codeAt(hi)
		thr := uint32(math.MaxUint32) // u > thr never holds
		if cl != ch {
			// Invariant: codeAt(a) == cl, codeAt(b) == ch.
			a, b := lo, hi
			for b-a > 1 {
				m := a + (b-a)/2
				if codeAt(m) == cl {
					a = m
				} else {
					b = m
				}
			}
			thr = a
		}
		t[k] = uint64(thr) | uint64(cl)<<32 | uint64(ch)<<40
	}
}

// lookup returns the code of the scaled value with bit pattern u.
func (t *codeTable) lookup(u uint32) byte {
	e := t[u>>16]
	// gt is 1 when u > uint32(e), else 0, without a branch.
	gt := uint64(int64(uint32(e))-int64(u)) >> 63
	return byte(e >> (32 + 8*gt))
}

// QuantizeBlocks quantizes src to 4-bit codes of type q in blocks of
// blocksize elements, exactly as the bitsandbytes CUDA kernel
// kQuantizeBlockwise does (spec §2): per block, absmax is the largest |x|
// ignoring NaN (starting from -MaxFloat32, so an all-NaN block gets
// -MaxFloat32), subnormal inputs count as zero, each x is scaled by the
// GPU's approximate reciprocal of absmax and mapped to a code with the
// kernel's strict thresholds. An all-zero block therefore scales to NaN and
// gets code 0 for both types.
//
// src holds the values already cast to the model dtype and widened to
// float32. It is a run of whole blocks, except that the last run of a tensor
// may end in a partial block, which gets its own absmax over its elements.
// dst receives PackedBytes(len(src)) bytes, the code of element 2j in the
// high nibble of byte j and that of element 2j+1 in the low nibble; an odd
// tail is padded, as the kernel does, with the code of a 0.0 scaled by the
// last block's reciprocal (NF4 7, FP4 0, or 0 if that block is all zero).
// absmax receives NumBlocks(len(src), blocksize) values.
//
// QuantizeBlocks does not allocate. It panics if q or blocksize is invalid
// or dst or absmax is too short: those are programming errors, not bad data.
func QuantizeBlocks(dst []byte, absmax []float32, src []float32, blocksize int, q QuantType) {
	if !q.Valid() {
		panic("bnb: QuantizeBlocks: invalid quant type " + q.String())
	}
	if !ValidBlocksize(blocksize) {
		panic("bnb: QuantizeBlocks: invalid blocksize")
	}
	n := int64(len(src))
	if int64(len(dst)) < PackedBytes(n) || int64(len(absmax)) < NumBlocks(n, blocksize) {
		panic("bnb: QuantizeBlocks: dst or absmax too short")
	}
	tab := tableFor(q)
	rcp := rcpTable()
	for b := 0; len(src) > 0; b++ {
		blk := src[:min(blocksize, len(src))]
		src = src[len(blk):]
		am, flush := blockAbsmax(blk)
		absmax[b] = am
		r := rcpApproxT(rcp, am)
		out := dst[:(len(blk)+1)/2]
		dst = dst[len(out):]
		if flush {
			encodeBlockFTZ(out, blk, r, tab)
		} else {
			encodeBlock(out, blk, r, tab)
		}
	}
}

// blockAbsmax returns the block's absmax as the CUDA kernel computes it
// (fmaxf from -MaxFloat32 over fabsf(x), NaN ignored, subnormals flushed)
// and whether the block holds a subnormal that the encoder must flush.
//
// It works on bit patterns: for |x| the unsigned order of bits&0x7fffffff
// is the numeric order, and NaNs sort above +Inf.
func blockAbsmax(blk []float32) (absmax float32, hasSubnormal bool) {
	var mx uint32
	mnm1 := uint32(math.MaxUint32) // min over (|x| bits - 1): zeros wrap to the top
	for _, v := range blk {
		m := math.Float32bits(v) & 0x7fffffff
		mx = max(mx, m)
		mnm1 = min(mnm1, m-1)
	}
	hasSubnormal = mnm1 < 0x007fffff
	if mx > 0x7f800000 { // a NaN: take the maximum over the others
		mx = 0
		seen := false
		for _, v := range blk {
			if m := math.Float32bits(v) & 0x7fffffff; m <= 0x7f800000 {
				mx = max(mx, m)
				seen = true
			}
		}
		if !seen {
			return -math.MaxFloat32, hasSubnormal
		}
	}
	if mx < 0x00800000 {
		mx = 0
	}
	return math.Float32frombits(mx), hasSubnormal
}

// encodeBlock writes the codes of blk scaled by r, two per byte. blk holds
// no subnormal values.
func encodeBlock(out []byte, blk []float32, r float32, tab *codeTable) {
	for len(blk) >= 2 && len(out) >= 1 {
		c0 := tab.lookup(math.Float32bits(blk[0] * r))
		c1 := tab.lookup(math.Float32bits(blk[1] * r))
		out[0] = c0<<4 | c1
		blk, out = blk[2:], out[1:]
	}
	if len(blk) == 1 {
		encodeTail(out, blk[0], r, tab)
	}
}

// encodeBlockFTZ is encodeBlock for a block that holds subnormal values,
// which the GPU reads as zeros.
func encodeBlockFTZ(out []byte, blk []float32, r float32, tab *codeTable) {
	for len(blk) >= 2 && len(out) >= 1 {
		c0 := tab.lookup(math.Float32bits(ftz(blk[0]) * r))
		c1 := tab.lookup(math.Float32bits(ftz(blk[1]) * r))
		out[0] = c0<<4 | c1
		blk, out = blk[2:], out[1:]
	}
	if len(blk) == 1 {
		encodeTail(out, ftz(blk[0]), r, tab)
	}
}

// encodeTail writes the last byte of an odd-length tensor: the kernel loads
// 0.0 for the missing element and scales it like the others.
func encodeTail(out []byte, x, r float32, tab *codeTable) {
	c0 := tab.lookup(math.Float32bits(x * r))
	c1 := tab.lookup(math.Float32bits(0 * r))
	out[0] = c0<<4 | c1
}
