// Package crc32c computes CRC-32C (Castagnoli) checksums, the checksum
// that convert keeps of every output file in its done markers, and
// combines the checksums of adjacent pieces. Checksum gives the result of
// hash/crc32 with the Castagnoli table; on amd64 CPUs with AVX-512 and
// VPCLMULQDQ it folds long inputs 256 bytes at a time with carry-less
// multiplies, about four times as fast as hash/crc32's SSE4.2 loop, and
// leaves the rest to hash/crc32.
//
// It is not a general hashing package: no streaming hash.Hash32 (use
// hash/crc32 with Table for that), no other polynomials.
package crc32c

import "hash/crc32"

// Table is hash/crc32's table of the Castagnoli polynomial.
var Table = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of b, as crc32.Checksum(b, Table) does.
func Checksum(b []byte) uint32 {
	n := len(b) &^ (foldBytes - 1)
	if !useFold || n < minFold {
		return crc32.Checksum(b, Table)
	}
	// hash/crc32 inverts the register before and after; in between it is
	// a linear function of the bytes. The fold starts from the register
	// of an empty input (all ones) and leaves 256 bytes whose CRC from a
	// zero register is that of b[:n]; hash/crc32 finishes from there.
	var acc [foldBytes]byte
	fold(&acc, b[:n], 0xffffffff)
	c := crc32.Update(0xffffffff, Table, acc[:]) // the CRC of b[:n]
	return crc32.Update(c, Table, b[n:])
}

// foldBytes is the number of bytes the fold kernel takes per step (four
// 512-bit accumulators) and leaves behind; minFold the shortest input it
// is used for, below which hash/crc32 alone is as fast.
const (
	foldBytes = 256
	minFold   = 1024
)

// Combine returns the CRC-32C of the concatenation A‖B, given crcA =
// Checksum(A), crcB = Checksum(B) and lenB = len(B).
func Combine(crcA, crcB uint32, lenB int64) uint32 {
	return multModP(xnModP(8*lenB), crcA) ^ crcB
}

// multModP returns a(x)·b(x) modulo the CRC polynomial, for polynomials in
// the reflected representation of the CRC (the top bit is x^0).
func multModP(a, b uint32) uint32 {
	var p uint32
	for m := uint32(1) << 31; m != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
		}
		// b *= x
		if b&1 != 0 {
			b = b>>1 ^ crc32.Castagnoli
		} else {
			b >>= 1
		}
	}
	return p
}

// x2nModP[k] is x^(2^k) modulo the CRC polynomial.
var x2nModP = func() (t [64]uint32) {
	p := uint32(1) << 30 // x^1
	for k := range t {
		t[k] = p
		p = multModP(p, p)
	}
	return t
}()

// xnModP returns x^n modulo the CRC polynomial (n >= 0).
func xnModP(n int64) uint32 {
	p := uint32(1) << 31 // x^0
	for k := 0; n != 0; k++ {
		if n&1 != 0 {
			p = multModP(x2nModP[k%64], p)
		}
		n >>= 1
	}
	return p
}
