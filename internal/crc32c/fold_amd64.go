//go:build amd64 && !purego

package crc32c

import "golang.org/x/sys/cpu"

// haveFold says whether the CPU has the fold kernel's instructions,
// AVX-512F and VPCLMULQDQ, and the OS keeps their registers (x/sys/cpu
// checks both); useFold whether Checksum uses it (tests turn it off to
// compare).
var (
	haveFold = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VPCLMULQDQ
	useFold  = haveFold
)

// foldKeys holds, in each 128-bit lane, the multipliers that move the
// lane's two 64-bit halves 2048 bits (256 bytes) further on: x^(2048+32)
// and x^(2048-32) modulo the polynomial, reflected, times x (the shift
// that a carry-less multiply of reflected operands needs). They are the
// constants of Intel's "Fast CRC Computation for Generic Polynomials
// Using PCLMULQDQ Instruction" (2009) for a 2048-bit fold, computed here
// from the polynomial; TestChecksum holds the result to hash/crc32.
var foldKeys = func() (k [8]uint64) {
	lo, hi := uint64(xnModP(2048+32))<<1, uint64(xnModP(2048-32))<<1
	for i := 0; i < 8; i += 2 {
		k[i], k[i+1] = lo, hi
	}
	return k
}()

// foldAVX512 folds the n bytes at p (n a positive multiple of 256), the
// CRC register state XORed into their first four, into the 256 bytes of
// acc, whose CRC from a zero register is that of p's bytes from state.
//
//go:noescape
func foldAVX512(acc *[foldBytes]byte, p *byte, n int, state uint32, keys *[8]uint64)

// fold is foldAVX512 on b, whose length is a positive multiple of 256.
func fold(acc *[foldBytes]byte, b []byte, state uint32) {
	foldAVX512(acc, &b[0], len(b), state, &foldKeys)
}
