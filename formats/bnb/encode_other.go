//go:build !amd64 || purego

package bnb

// haveAVX2 is false: this build has no vector kernels.
const haveAVX2 = false

// haveAVX512 is false: this build has no vector kernels.
const haveAVX512 = false

// useAVX512 is false: this build has no vector kernels.
var useAVX512 = false

// encodeBlocksSIMD reports false: this build has no vector kernels.
func encodeBlocksSIMD(out, src []byte, rs []float32, bs int, f16 bool, q QuantType) bool {
	return false
}

// blockStatsSIMD reports false: this build has no vector kernels.
func blockStatsSIMD(st []uint32, src []byte, bs int) bool {
	return false
}

// roundBF16SIMD reports false: this build has no vector kernels.
func roundBF16SIMD(dst, src []byte) bool {
	return false
}

// encodeBlocks32SIMD reports false: this build has no vector kernels.
func encodeBlocks32SIMD(out, src []byte, rs []float32, bs int, q QuantType) bool {
	return false
}

// blockStats32SIMD reports false: this build has no vector kernels.
func blockStats32SIMD(st []uint32, src []byte, bs int) bool {
	return false
}

// dq8SIMD reports false: this build has no vector kernels.
func dq8SIMD(out []byte, src []float32, r float32, q *quantizer8) bool {
	return false
}
