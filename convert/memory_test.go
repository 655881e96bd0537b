package convert

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/safetensors"
)

// writeManyTensors writes a checkpoint of n one-byte U8 tensors named by
// their hexadecimal index, the shape of issue 14's reproduction (1.5 M such
// tensors make a 99.9 MB header), and returns its path.
func writeManyTensors(t testing.TB, n int) string {
	t.Helper()
	var h strings.Builder
	h.WriteString(`{"__metadata__":{"format":"pt"}`)
	for i := range n {
		fmt.Fprintf(&h, `,"%x":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}`, i, i, i+1)
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}
	file := binary.LittleEndian.AppendUint64(nil, uint64(h.Len()))
	file = append(file, h.String()...)
	file = append(file, make([]byte, n)...)
	path := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(path, file, 0o666); err != nil {
		t.Fatal(err)
	}
	return path
}

// liveHeap returns the bytes of live heap after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestMemoryPerTensor holds the plan and the layout of an output file to
// their memory budget for many small tensors (issue 14): what the plan
// keeps beyond the opened checkpoint is about 100 bytes a tensor (an item
// of 72, its pointer, an 8-byte entry, a reference to it in its file, and
// the runner's offset), what a file's layout keeps about 40 (order,
// offset, the entry of each, and what its specs are made from; the header
// is made again as it is written, not held). Before, the plan
// kept about 390 bytes a tensor (copies of each tensor's header entry, a
// map of names) and a layout 130 more (a TensorInfo per tensor and the
// header bytes).
func TestMemoryPerTensor(t *testing.T) {
	const n = 200_000
	path := writeManyTensors(t, n)
	in, err := openSource(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.ck.Close()
	s, err := (&Options{}).settings()
	if err != nil {
		t.Fatal(err)
	}
	base := liveHeap()
	p, err := newPlan(s, in.tensors, in.files, in.config)
	if err != nil {
		t.Fatal(err)
	}
	withPlan := liveHeap()
	if p.Kept != n || len(p.Files) != 1 {
		t.Fatalf("plan: %d kept, %d files", p.Kept, len(p.Files))
	}
	r := &runner{p: p, s: s, off: make([]int64, n)}
	l, refs, err := r.plan(0, func(*item) (int64, error) { return 0, nil })
	if err != nil {
		t.Fatal(err)
	}
	withLayout := liveHeap()
	perPlan := float64(withPlan-base) / n
	perLayout := float64(withLayout-withPlan) / n
	t.Logf("plan %.0f bytes a tensor, layout %.0f (refs included), header %d bytes", perPlan, perLayout, l.HeaderLen)
	if perPlan > 120 {
		t.Errorf("the plan keeps %.0f bytes a tensor, want at most 120", perPlan)
	}
	if perLayout > 48 { // order 4, offset 8, the entry refs 8, the spec's names 16 and quant-state indexes 4: 40
		t.Errorf("a layout keeps %.0f bytes a tensor, want at most 48", perLayout)
	}
	// The layout is the file's: its header is the input's (sorted by
	// name, which hexadecimal names of one to five digits are not).
	var hdr []byte
	if err := l.WriteHeader(func(b []byte) error { hdr = append(hdr, b...); return nil }); err != nil {
		t.Fatal(err)
	}
	rd, err := safetensors.NewReader(readerAt(append(hdr, make([]byte, l.DataSize)...)), l.FileSize())
	if err != nil {
		t.Fatal(err)
	}
	if len(rd.Tensors()) != n || len(refs) != n {
		t.Errorf("%d tensors in the layout's header, %d refs, want %d", len(rd.Tensors()), len(refs), n)
	}
	runtime.KeepAlive(p)
	runtime.KeepAlive(l)
}

type readerAt []byte

func (b readerAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, fmt.Errorf("EOF")
	}
	return copy(p, b[off:]), nil
}
