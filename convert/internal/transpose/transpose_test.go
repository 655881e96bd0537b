package transpose

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// naive returns the transpose of the row-major [rows, cols] tensor m.
func naive(m []byte, rows, cols, size int64) []byte {
	out := make([]byte, len(m))
	for r := int64(0); r < rows; r++ {
		for c := int64(0); c < cols; c++ {
			copy(out[(c*rows+r)*size:(c*rows+r+1)*size], m[(r*cols+c)*size:(r*cols+c+1)*size])
		}
	}
	return out
}

type sliceWriter []byte

func (w sliceWriter) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(w)) {
		return 0, errors.New("write out of range")
	}
	return copy(w[off:], p), nil
}

// pieces cuts [0, n) elements into random consecutive pieces.
func pieces(rng *rand.Rand, n int64) [][2]int64 {
	var out [][2]int64
	for e := int64(0); e < n; {
		k := min(n-e, 1+rng.Int64N(max(1, n/3)))
		out = append(out, [2]int64{e, k})
		e += k
	}
	return out
}

// Reading the transpose in any pieces and writing it back in any pieces
// give the naive transpose and the original tensor.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 500; i++ {
		rows, cols := 1+rng.Int64N(40), 1+rng.Int64N(40)
		size := []int64{1, 2, 4}[rng.IntN(3)]
		m := make([]byte, rows*cols*size)
		for j := range m {
			m[j] = byte(rng.Uint32())
		}
		want := naive(m, rows, cols, size)
		sh := Shape{Rows: rows, Cols: cols, Size: size}
		rd := &Reader{Src: bytes.NewReader(m), Shape: sh}
		got := make([]byte, len(m))
		for _, pc := range pieces(rng, rows*cols) {
			p := got[pc[0]*size : (pc[0]+pc[1])*size]
			if n, err := rd.ReadAt(p, pc[0]*size); err != nil || n != len(p) {
				t.Fatalf("[%d,%d]x%d: ReadAt %v: %d, %v", rows, cols, size, pc, n, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("[%d,%d]x%d: Reader does not give the transpose", rows, cols, size)
		}
		back := make(sliceWriter, len(m))
		wr := &Writer{Dst: back, Shape: sh}
		for _, pc := range pieces(rng, rows*cols) {
			p := want[pc[0]*size : (pc[0]+pc[1])*size]
			if n, err := wr.WriteAt(p, pc[0]*size); err != nil || n != len(p) {
				t.Fatalf("[%d,%d]x%d: WriteAt %v: %d, %v", rows, cols, size, pc, n, err)
			}
		}
		if !bytes.Equal(back, m) {
			t.Fatalf("[%d,%d]x%d: Writer does not write the tensor back", rows, cols, size)
		}
	}
}

// Every piece of a small transpose, from every offset (moved here from
// convert, whose transposedReader this Reader replaced).
func TestReaderEveryPiece(t *testing.T) {
	const rows, cols, size = 5, 7, 2
	src := make([]byte, rows*cols*size)
	for i := range src {
		src[i] = byte(i)
	}
	tr := &Reader{Src: bytes.NewReader(src), Shape: Shape{Rows: rows, Cols: cols, Size: size}}
	want := make([]byte, len(src))
	for c := 0; c < cols; c++ {
		for r := 0; r < rows; r++ {
			copy(want[(c*rows+r)*size:], src[(r*cols+c)*size:(r*cols+c+1)*size])
		}
	}
	for off := 0; off < rows*cols; off++ {
		for n := 1; off+n <= rows*cols; n++ {
			p := make([]byte, n*size)
			if got, err := tr.ReadAt(p, int64(off*size)); err != nil || got != len(p) || !bytes.Equal(p, want[off*size:(off+n)*size]) {
				t.Fatalf("ReadAt(%d elements at %d) = %d, %v", n, off, got, err)
			}
		}
	}
	p := make([]byte, 4*size)
	if got, err := tr.ReadAt(p, int64((rows*cols-2)*size)); err != io.EOF || got != 2*size {
		t.Errorf("read past the end: %d, %v", got, err)
	}
	if _, err := tr.ReadAt(p[:3], 0); err == nil {
		t.Error("unaligned read accepted")
	}
}

// A Writer writes only the elements it is given: the bytes around a piece
// stay as they were.
func TestWriterTouchesOnlyItsPiece(t *testing.T) {
	const rows, cols, size = 5, 7, 2
	sentinel := bytes.Repeat([]byte{0xEE}, rows*cols*size)
	dst := make(sliceWriter, len(sentinel))
	copy(dst, sentinel)
	w := &Writer{Dst: dst, Shape: Shape{Rows: rows, Cols: cols, Size: size}}
	// Elements 3..11 of the transpose: (c=0, r=3..4), (c=1, r=0..4), (c=2, r=0..1).
	if _, err := w.WriteAt(make([]byte, 9*size), 3*size); err != nil {
		t.Fatal(err)
	}
	for r := int64(0); r < rows; r++ {
		for c := int64(0); c < cols; c++ {
			e := c*rows + r
			in := e >= 3 && e < 12
			b := dst[(r*cols+c)*size]
			if in != (b == 0) {
				t.Errorf("element (%d, %d), transposed %d: byte %#x", r, c, e, b)
			}
		}
	}
}

func TestErrors(t *testing.T) {
	sh := Shape{Rows: 3, Cols: 4, Size: 2}
	rd := &Reader{Src: bytes.NewReader(make([]byte, 24)), Shape: sh}
	if _, err := rd.ReadAt(make([]byte, 3), 0); err == nil {
		t.Error("a read of half an element was accepted")
	}
	if _, err := rd.ReadAt(make([]byte, 2), 1); err == nil {
		t.Error("a misaligned read was accepted")
	}
	if n, err := rd.ReadAt(make([]byte, 8), 20); n != 4 || err != io.EOF {
		t.Errorf("read past the end: %d, %v; want 4, EOF", n, err)
	}
	if _, err := rd.ReadAt(make([]byte, 2), 24); err != io.EOF {
		t.Errorf("read at the end: %v", err)
	}
	short := &Reader{Src: bytes.NewReader(make([]byte, 10)), Shape: sh}
	if _, err := short.ReadAt(make([]byte, 24), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short source: %v", err)
	}
	w := &Writer{Dst: make(sliceWriter, 24), Shape: sh}
	if _, err := w.WriteAt(make([]byte, 8), 20); err == nil {
		t.Error("a write past the end was accepted")
	}
	if _, err := (&Writer{Dst: make(sliceWriter, 24), Shape: Shape{Rows: 3, Cols: 4}}).WriteAt(nil, 0); err == nil {
		t.Error("a zero element size was accepted")
	}
}

func BenchmarkWriter(b *testing.B) {
	const rows, cols, size = 768, 2304, 2
	dst := make(sliceWriter, rows*cols*size)
	w := &Writer{Dst: dst, Shape: Shape{Rows: rows, Cols: cols, Size: size}}
	p := make([]byte, 1<<20*size)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.WriteAt(p, 0); err != nil {
			b.Fatal(err)
		}
	}
}
