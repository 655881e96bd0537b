//go:build amd64 && !purego

package bnb

//go:generate go run encode_amd64_gen.go

// The AVX2 kernels of encode_amd64.s encode nblocks whole blocks of bs
// 16-bit elements (bs a multiple of 32) from src, block b scaled by rs[b],
// into out, choosing codes by counting the thresholds below each scaled
// value with vector compares: the definition of scalarCode, so they give
// the bytes of encodeBF16 and encodeF16 (the tests check both paths).

//go:noescape
func encodeBF16NF4AVX2(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeBF16FP4AVX2(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeF16NF4AVX2(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeF16FP4AVX2(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeF32NF4AVX2(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeF32FP4AVX2(out, src *byte, rs *float32, nblocks, bs int)

// The AVX-512 kernels take the arguments of the AVX2 kernel of the same
// name and write the same bytes, 16 lanes at a time.

//go:noescape
func encodeBF16NF4AVX512(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeBF16FP4AVX512(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeF16NF4AVX512(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeF16FP4AVX512(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeF32NF4AVX512(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func encodeF32FP4AVX512(out, src *byte, rs *float32, nblocks, bs int)

//go:noescape
func stats16AVX2(out *uint32, src *byte, nblocks, bs int)

//go:noescape
func stats32AVX2(out *uint32, src *byte, nblocks, bs int)

//go:noescape
func roundBF16AVX2(dst, src *byte, n int)

// dq8AVX512 sets out[i] to quantizeFinite(ftz(src[i]*r)) by lut, the
// quantizer8 table, for i < n &^ 15.
//
//go:noescape
func dq8AVX512(out *byte, src *float32, n int, r float32, lut *uint32)

func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)

func xgetbv0() (eax uint32)

// haveAVX2 reports whether the CPU and the OS support AVX2. It is set once,
// at package initialisation.
var haveAVX2 = func() bool {
	maxID, _, _, _ := cpuid(0, 0)
	if maxID < 7 {
		return false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	const osxsave, avx = 1 << 27, 1 << 28
	if ecx1&osxsave == 0 || ecx1&avx == 0 || xgetbv0()&6 != 6 { // XMM and YMM state enabled
		return false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	return ebx7&(1<<5) != 0
}()

// haveAVX512 reports whether the CPU and the OS support AVX-512 F and BW
// (the opmask and all 32 ZMM registers enabled in XCR0). It is set once,
// at package initialisation.
var haveAVX512 = func() bool {
	if !haveAVX2 {
		return false
	}
	const opmaskZMM = 7 << 5
	if xgetbv0()&opmaskZMM != opmaskZMM {
		return false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	const avx512f, avx512bw = 1 << 16, 1 << 30
	return ebx7&avx512f != 0 && ebx7&avx512bw != 0
}()

// useAVX512 selects the AVX-512 encoders where the CPU has them; the tests
// turn it off to run the AVX2 kernels on such CPUs too.
var useAVX512 = haveAVX512

// encodeBlocksSIMD encodes len(rs) whole blocks of bs 16-bit elements of
// src (F16 if f16, else BF16), block b scaled by rs[b] (by r·2^112 for F16,
// as for encodeF16), into out. It reports false, doing nothing, where the
// CPU has no vector kernel.
func encodeBlocksSIMD(out, src []byte, rs []float32, bs int, f16 bool, q QuantType) bool {
	if !haveAVX2 || len(rs) == 0 {
		return false
	}
	if len(src) < 2*bs*len(rs) || len(out) < bs/2*len(rs) || bs%32 != 0 {
		panic("bnb: encodeBlocksSIMD: short buffers")
	}
	switch {
	case useAVX512 && !f16 && q == NF4:
		encodeBF16NF4AVX512(&out[0], &src[0], &rs[0], len(rs), bs)
	case useAVX512 && !f16:
		encodeBF16FP4AVX512(&out[0], &src[0], &rs[0], len(rs), bs)
	case useAVX512 && q == NF4:
		encodeF16NF4AVX512(&out[0], &src[0], &rs[0], len(rs), bs)
	case useAVX512:
		encodeF16FP4AVX512(&out[0], &src[0], &rs[0], len(rs), bs)
	case !f16 && q == NF4:
		encodeBF16NF4AVX2(&out[0], &src[0], &rs[0], len(rs), bs)
	case !f16:
		encodeBF16FP4AVX2(&out[0], &src[0], &rs[0], len(rs), bs)
	case q == NF4:
		encodeF16NF4AVX2(&out[0], &src[0], &rs[0], len(rs), bs)
	default:
		encodeF16FP4AVX2(&out[0], &src[0], &rs[0], len(rs), bs)
	}
	return true
}

// blockStatsSIMD writes, for each of the len(st) whole blocks of bs 16-bit
// elements of src, the largest magnitude bits&0x7fff of its elements, plus
// 1<<16 if one of them is a BF16 subnormal (0 < bits&0x7fff < 0x80): what
// bf16Stats and halfMax compute. It reports false, doing nothing, where
// the CPU has no vector kernel.
func blockStatsSIMD(st []uint32, src []byte, bs int) bool {
	if !haveAVX2 || len(st) == 0 {
		return false
	}
	if len(src) < 2*bs*len(st) || bs%32 != 0 {
		panic("bnb: blockStatsSIMD: short buffers")
	}
	stats16AVX2(&st[0], &src[0], len(st), bs)
	return true
}

// roundBF16SIMD rounds the float32 elements of src to BF16 in dst as
// roundF32ToBF16 does, and reports whether the CPU has the vector kernel
// (false: nothing done).
func roundBF16SIMD(dst, src []byte) bool {
	if !haveAVX2 {
		return false
	}
	n := min(len(src)/4, len(dst)/2)
	if v := n &^ 15; v > 0 {
		roundBF16AVX2(&dst[0], &src[0], v)
	}
	if v := n &^ 15; v < n {
		roundF32ToBF16(dst[2*v:2*n], src[4*v:4*n])
	}
	return true
}

// encodeBlocks32SIMD is encodeBlocksSIMD for little-endian float32
// elements, which it multiplies by rs[b] as they are (no flushing: blocks
// with subnormal elements are not for it).
func encodeBlocks32SIMD(out, src []byte, rs []float32, bs int, q QuantType) bool {
	if !haveAVX2 || len(rs) == 0 {
		return false
	}
	if len(src) < 4*bs*len(rs) || len(out) < bs/2*len(rs) || bs%32 != 0 {
		panic("bnb: encodeBlocks32SIMD: short buffers")
	}
	switch {
	case useAVX512 && q == NF4:
		encodeF32NF4AVX512(&out[0], &src[0], &rs[0], len(rs), bs)
	case useAVX512:
		encodeF32FP4AVX512(&out[0], &src[0], &rs[0], len(rs), bs)
	case q == NF4:
		encodeF32NF4AVX2(&out[0], &src[0], &rs[0], len(rs), bs)
	default:
		encodeF32FP4AVX2(&out[0], &src[0], &rs[0], len(rs), bs)
	}
	return true
}

// blockStats32SIMD writes, for each of the len(st) whole blocks of bs
// little-endian float32 elements of src, the largest magnitude
// bits&0x7fffffff of its elements, plus 1<<31 if one of them is subnormal.
// It reports false, doing nothing, where the CPU has no vector kernel.
func blockStats32SIMD(st []uint32, src []byte, bs int) bool {
	if !haveAVX2 || len(st) == 0 {
		return false
	}
	if len(src) < 4*bs*len(st) || bs%32 != 0 {
		panic("bnb: blockStats32SIMD: short buffers")
	}
	stats32AVX2(&st[0], &src[0], len(st), bs)
	return true
}

// dq8SIMD sets out[i] to q.quantizeFinite(ftz(src[i]*r)) for every i <
// len(src), src holding finite values, and reports whether the CPU has
// the vector kernel (false: nothing done).
func dq8SIMD(out []byte, src []float32, r float32, q *quantizer8) bool {
	if !useAVX512 || len(src) == 0 {
		return false
	}
	if len(out) < len(src) {
		panic("bnb: dq8SIMD: short buffers")
	}
	v := len(src) &^ 15
	if v > 0 {
		dq8AVX512(&out[0], &src[0], v, r, &q.lut[0])
	}
	for i := v; i < len(src); i++ {
		out[i] = q.quantizeFinite(ftz(src[i] * r))
	}
	return true
}
