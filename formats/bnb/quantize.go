package bnb

import (
	"math"
	"sync"
	"unsafe"
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

// A codeTable turns the bit pattern u of a scaled value into its code with
// two loads and no branch. The top 16 bits of u (sign, exponent and 7
// mantissa bits) select a bucket; within a bucket lies at most one
// threshold. The bucket's entry e gives a slot
//
//	slot := (e - u&0xffff) >> 24
//
// and the code is lo[slot] (hi[slot] is the same code shifted into the high
// nibble, for packing). The low 16 bits of e are the low bits of the last
// pattern in the bucket that gets the lower code, or 0xffff if the bucket
// has no threshold; bits 16-23 are zero and bits 24-31 a slot A. The
// subtraction borrows into A, giving slot A-1, exactly for the patterns
// above the threshold, so each bucket with a threshold owns a pair of
// adjacent slots. Comparing raw bit patterns as unsigned integers orders
// values by magnitude within a bucket, which makes this work on the negative
// side too; NaN, ±Inf and subnormal buckets are covered like any other.
//
// To save an instruction, e is stored plus the bucket's own high bits,
// u&0xffff0000, so that the slot is (entry - u) >> 24.
type codeTable struct {
	entry  [1 << 16]uint32
	lo, hi [256]byte
}

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
// pattern of the upper code. TestCodeTable checks the result against the
// kernels' decision trees over every bucket that has a threshold (and, with
// -bnb.exhaustive, over all 2^32 patterns).
func buildCodeTable(t *codeTable, q QuantType) {
	codeAt := func(u uint32) byte { return scalarCode(q, math.Float32frombits(u)) }
	// Slots 0-15 hold the codes themselves, for buckets without a
	// threshold; pairs (A-1, A) from 16 on serve the buckets with one.
	for c := range 16 {
		t.lo[c], t.hi[c] = byte(c), byte(c)<<4
	}
	pairs := map[[2]byte]uint32{} // (lower code, upper code) -> A
	next := uint32(16)
	for k := range t.entry {
		lo := uint32(k) << 16
		hi := lo | 0xffff
		cl, ch := codeAt(lo), codeAt(hi)
		if cl == ch {
			t.entry[k] = (0xffff | uint32(cl)<<24) + lo
			continue
		}
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
		A, ok := pairs[[2]byte{cl, ch}]
		if !ok {
			if next > 254 {
				panic("bnb: code table: out of slots")
			}
			A = next + 1
			next += 2
			pairs[[2]byte{cl, ch}] = A
			t.lo[A], t.hi[A] = cl, cl<<4
			t.lo[A-1], t.hi[A-1] = ch, ch<<4
		}
		t.entry[k] = (a&0xffff | A<<24) + lo
	}
}

// slot returns the slot of the scaled value with bit pattern u.
func (t *codeTable) slot(u uint32) uint32 {
	return (t.entry[u>>16] - u) >> 24
}

// lookup returns the code of the scaled value with bit pattern u.
func (t *codeTable) lookup(u uint32) byte {
	return t.lo[t.slot(u)]
}

// pack returns the byte holding the codes of the scaled values with bit
// patterns u0 (high nibble) and u1.
func (t *codeTable) pack(u0, u1 uint32) byte {
	return t.hi[t.slot(u0)] | t.lo[t.slot(u1)]
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
// QuantizeBlocks does not allocate and is safe for concurrent use (its
// lookup tables are built once, on first use, and only read afterwards). It
// panics if q or blocksize is invalid or dst or absmax is too short: those
// are programming errors, not bad data.
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
	quantizeBlocks(dst, absmax, src, blocksize, tableFor(q), rcpTable())
}

// quantizeBlocks is QuantizeBlocks for validated arguments.
func quantizeBlocks(dst []byte, absmax []float32, src []float32, blocksize int, tab *codeTable, rcp *[rcpTableLen / 4]byte) {
	// Blocks are processed in chunks of at most chunkBlocks blocks and
	// chunkElems elements: first the absmax of each block, then their
	// reciprocals, then the codes. The reciprocal table is 2 MiB and is
	// indexed by the absmax mantissa, so its reads mostly miss the cache;
	// issuing a chunk's reads together lets them overlap instead of
	// stalling every block, and the chunk's input (32 KiB) stays in the
	// L1/L2 cache for the second pass. (Measured: 16 KiB and 64 KiB chunks
	// were 10-15% slower for 64-element blocks.)
	const chunkBlocks, chunkElems = 256, 8 << 10
	var rs [chunkBlocks]float32
	var flush [chunkBlocks]bool
	per := max(1, min(chunkBlocks, chunkElems/blocksize))
	for len(src) > 0 {
		nb := min(per, (len(src)+blocksize-1)/blocksize)
		chunk := src[:min(len(src), nb*blocksize)]
		src = src[len(chunk):]
		am := absmax[:nb]
		absmax = absmax[nb:]
		for j := range am {
			am[j], flush[j] = blockAbsmax(chunk[j*blocksize : min((j+1)*blocksize, len(chunk))])
		}
		for j, a := range am {
			rs[j] = rcpApproxT(rcp, a)
		}
		for j := range am {
			blk := chunk[j*blocksize : min((j+1)*blocksize, len(chunk))]
			out := dst[:(len(blk)+1)/2]
			dst = dst[len(out):]
			if flush[j] {
				encodeBlockFTZ(out, blk, rs[j], tab)
			} else {
				encodeBlock(out, blk, rs[j], tab)
			}
		}
	}
}

// BlockAbsmax computes the absmax of each block of src exactly as
// QuantizeBlocks does, without encoding: the largest |x| ignoring NaN
// (-MaxFloat32 for an all-NaN block, +Inf if the block holds ±Inf) with
// subnormal values counting as zero, as the CUDA kernel's fmaxf from
// -MaxFloat32 under flush-to-zero gives it. A converter's statistics pass
// needs only these (their CUDAMean is the double-quant offset).
//
// src is laid out in blocks as for QuantizeBlocks; absmax receives
// NumBlocks(len(src), blocksize) values. BlockAbsmax does not allocate and
// panics if blocksize is invalid or absmax too short.
func BlockAbsmax(absmax []float32, src []float32, blocksize int) {
	if !ValidBlocksize(blocksize) {
		panic("bnb: BlockAbsmax: invalid blocksize")
	}
	if int64(len(absmax)) < NumBlocks(int64(len(src)), blocksize) {
		panic("bnb: BlockAbsmax: absmax too short")
	}
	for j := 0; len(src) > 0; j++ {
		blk := src[:min(blocksize, len(src))]
		src = src[len(blk):]
		absmax[j], _ = blockAbsmax(blk)
	}
}

// blockAbsmax returns the block's absmax as the CUDA kernel computes it
// (fmaxf from -MaxFloat32 over fabsf(x), NaN ignored, subnormals flushed)
// and whether the block holds a subnormal that the encoder must flush.
//
// It works on bit patterns shifted left by one (dropping the sign): their
// unsigned order is the order of |x|, and NaNs sort above +Inf. Independent
// accumulators keep the loop off a single dependency chain.
func blockAbsmax(blk []float32) (absmax float32, hasSubnormal bool) {
	w := float32Bits(blk)
	var mx0, mx1, mx2, mx3 uint32
	mn0, mn1 := uint32(math.MaxUint32), uint32(math.MaxUint32)
	n := len(w) &^ 3
	for i := 0; i < n; i += 4 {
		x := w[i : i+4 : i+4]
		a0, a1, a2, a3 := x[0]<<1, x[1]<<1, x[2]<<1, x[3]<<1
		mx0, mx1, mx2, mx3 = max(mx0, a0), max(mx1, a1), max(mx2, a2), max(mx3, a3)
		mn0, mn1 = min(mn0, a0, a2), min(mn1, a1, a3)
	}
	for _, v := range w[n:] {
		mx0, mn0 = max(mx0, v<<1), min(mn0, v<<1)
	}
	mx := max(mx0, mx1, mx2, mx3)
	if min(mn0, mn1) < 0x01000000 { // a zero or a subnormal: which?
		for _, v := range w {
			if a := v << 1; a != 0 && a < 0x01000000 {
				hasSubnormal = true
				break
			}
		}
	}
	if mx > 0xff000000 { // a NaN: take the maximum over the others
		mx = 0
		seen := false
		for _, v := range w {
			if a := v << 1; a <= 0xff000000 {
				mx = max(mx, a)
				seen = true
			}
		}
		if !seen {
			return -math.MaxFloat32, hasSubnormal
		}
	}
	if mx < 0x01000000 { // zero or subnormal
		mx = 0
	}
	return math.Float32frombits(mx >> 1), hasSubnormal
}

// float32Bits views x as its IEEE bit patterns, without copying.
func float32Bits(x []float32) []uint32 {
	if len(x) == 0 {
		return nil
	}
	// float32 and uint32 have the same size and alignment.
	return unsafe.Slice((*uint32)(unsafe.Pointer(&x[0])), len(x))
}

// encodeBlock writes the codes of blk scaled by r, two per byte. blk holds
// no subnormal values.
func encodeBlock(out []byte, blk []float32, r float32, tab *codeTable) {
	n4 := len(blk) &^ 3
	out4 := out[:n4/2]
	for i := 0; i < n4; i += 4 {
		x := blk[i : i+4 : i+4]
		o := out4[i/2 : i/2+2 : i/2+2]
		o[0] = tab.pack(math.Float32bits(x[0]*r), math.Float32bits(x[1]*r))
		o[1] = tab.pack(math.Float32bits(x[2]*r), math.Float32bits(x[3]*r))
	}
	blk, out = blk[n4:], out[n4/2:]
	if len(blk) >= 2 {
		out[0] = tab.pack(math.Float32bits(blk[0]*r), math.Float32bits(blk[1]*r))
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
		out[0] = tab.pack(math.Float32bits(ftz(blk[0])*r), math.Float32bits(ftz(blk[1])*r))
		blk, out = blk[2:], out[1:]
	}
	if len(blk) == 1 {
		encodeTail(out, ftz(blk[0]), r, tab)
	}
}

// encodeTail writes the last byte of an odd-length tensor: the kernel loads
// 0.0 for the missing element and scales it like the others.
func encodeTail(out []byte, x, r float32, tab *codeTable) {
	var zero float32
	out[0] = tab.pack(math.Float32bits(x*r), math.Float32bits(zero*r))
}
