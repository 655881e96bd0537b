package convert

import (
	"cmp"
	"hash/crc32"
	"slices"
	"sync"
)

// The done marker of an output file holds the file's CRC-32C (state.go).
// Rather than read every finished file back, the runner takes the CRC of
// each piece as it writes it (the data is in the cache then) and combines
// the pieces' CRCs in file order once the file is complete.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crcPoly is the CRC-32C polynomial, bit-reversed as hash/crc32 uses it.
const crcPoly = crc32.Castagnoli

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
			b = b>>1 ^ crcPoly
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

// x8nModP returns x^(8n) modulo the CRC polynomial: the factor that
// appending n zero bytes applies to a CRC register.
func x8nModP(n int64) uint32 {
	p := uint32(1) << 31 // x^0
	for k := 3; n != 0; k++ {
		if n&1 != 0 {
			p = multModP(x2nModP[k%64], p)
		}
		n >>= 1
	}
	return p
}

// crcCombine returns the CRC-32C of the concatenation A‖B, given crcA =
// CRC(A), crcB = CRC(B) and lenB = len(B).
func crcCombine(crcA, crcB uint32, lenB int64) uint32 {
	return multModP(x8nModP(lenB), crcA) ^ crcB
}

// A crcPiece is the CRC-32C of the bytes written at [off, off+n).
type crcPiece struct {
	off, n int64
	crc    uint32
}

// A crcRecorder collects the CRCs of the pieces written to one file, from any
// goroutine.
type crcRecorder struct {
	mu     sync.Mutex
	pieces []crcPiece
}

// add records that b was written at off.
func (f *crcRecorder) add(off int64, b []byte) {
	if len(b) == 0 {
		return
	}
	c := crc32.Checksum(b, castagnoli)
	n := int64(len(b))
	f.mu.Lock()
	defer f.mu.Unlock()
	// A piece that continues one of the last few recorded (each worker
	// writes its tensors in order) is folded into it, so that millions of
	// small tensors do not cost a piece each.
	for k := len(f.pieces) - 1; k >= max(0, len(f.pieces)-4); k-- {
		if p := &f.pieces[k]; p.off+p.n == off {
			p.crc, p.n = crcCombine(p.crc, c, n), p.n+n
			return
		}
	}
	f.pieces = append(f.pieces, crcPiece{off, n, c})
}

// sum returns the CRC-32C of a file of the given size, if the recorded
// pieces cover it exactly, each byte once; ok is false otherwise.
func (f *crcRecorder) sum(size int64) (crc uint32, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	slices.SortFunc(f.pieces, func(a, b crcPiece) int { return cmp.Compare(a.off, b.off) })
	var at int64
	for _, p := range f.pieces {
		if p.off != at {
			return 0, false
		}
		crc = crcCombine(crc, p.crc, p.n)
		at += p.n
	}
	return crc, at == size
}
