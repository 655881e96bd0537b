package convert

import (
	"cmp"
	"slices"
	"sync"

	"github.com/qconv/qconv/internal/crc32c"
)

// The done marker of an output file holds the file's CRC-32C (state.go).
// Rather than read every finished file back, the runner takes the CRC of
// each piece as it writes it (the data is in the cache then) and combines
// the pieces' CRCs in file order once the file is complete.

var castagnoli = crc32c.Table

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
	c := crc32c.Checksum(b)
	n := int64(len(b))
	f.mu.Lock()
	defer f.mu.Unlock()
	// A piece that continues one of the last few recorded (each worker
	// writes its tensors in order) is folded into it, so that millions of
	// small tensors do not cost a piece each.
	for k := len(f.pieces) - 1; k >= max(0, len(f.pieces)-4); k-- {
		if p := &f.pieces[k]; p.off+p.n == off {
			p.crc, p.n = crc32c.Combine(p.crc, c, n), p.n+n
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
		crc = crc32c.Combine(crc, p.crc, p.n)
		at += p.n
	}
	return crc, at == size
}
