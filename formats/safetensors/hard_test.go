package safetensors

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/qconv/qconv/formats/dtype"

	nlp "github.com/nlpodyssey/safetensors"
)

// goldenFiles lists every safetensors file in testdata/golden.
func goldenFiles(t testing.TB) []string {
	t.Helper()
	files, _ := filepath.Glob("../../testdata/golden/models/*/*.safetensors")
	more, _ := filepath.Glob("../../testdata/golden/*.safetensors")
	files = append(files, more...)
	if len(files) < 25 {
		t.Fatalf("only %d golden files", len(files))
	}
	return files
}

// FuzzReader checks that NewReader never panics, reports only
// *FormatErrors on in-memory input, and that whatever it accepts is
// consistent. Seeds are kept small (a few KB) so that the fuzzer's input
// minimization stays fast: each golden file contributes a shrunken valid
// copy (its first tensors, names, dtypes and metadata, with every
// dimension cut to at most 2), and the small-header shards their raw
// header with a truncated data section.
func FuzzReader(f *testing.F) {
	for _, p := range goldenFiles(f) {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		r, err := NewReader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			f.Fatal(err)
		}
		if r.DataOffset() <= 4096 {
			f.Add(b[:r.DataOffset()+64])
		}
		var specs []TensorSpec
		for _, ti := range r.Tensors()[:min(len(r.Tensors()), 12)] {
			shape := make([]int64, len(ti.Shape))
			for i, d := range ti.Shape {
				shape[i] = min(d, 2)
			}
			specs = append(specs, TensorSpec{Name: ti.Name, DType: ti.DType, Shape: shape})
		}
		plan, err := NewPlan(r.Metadata(), specs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append(bytes.Clone(plan.Header), make([]byte, plan.DataSize)...))
	}
	for _, fx := range codeFixtures {
		for _, x := range fx.bad {
			f.Add(x.file)
		}
		for _, x := range fx.good {
			f.Add(x.file)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Code < CodeTooShort || fe.Code >= numCodes {
				t.Fatalf("not a FormatError with a valid code: %v", err)
			}
			return
		}
		checkReader(t, r, b)
		// A valid file re-plans to the same layout (data order may
		// differ from the reference order, so compare sizes only).
		var specs []TensorSpec
		for _, ti := range r.Tensors() {
			specs = append(specs, TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape})
		}
		p, err := NewPlan(r.Metadata(), specs)
		if err != nil {
			t.Fatalf("valid file does not re-plan: %v", err)
		}
		if p.DataSize != r.Size()-r.DataOffset() {
			t.Fatalf("re-planned data size %d, file has %d", p.DataSize, r.Size()-r.DataOffset())
		}
	})
}

// allocBytes returns the bytes allocated by f.
func allocBytes(f func()) uint64 {
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	f()
	runtime.ReadMemStats(&m1)
	return m1.TotalAlloc - m0.TotalAlloc
}

// TestAllocationBounded feeds adversarial headers and requires the bytes
// allocated to stay under a small multiple of the input size.
func TestAllocationBounded(t *testing.T) {
	longShape := `{"a":{"dtype":"U8","shape":[` + strings.Repeat("1,", 1<<20) + `0],"data_offsets":[0,0]}}`
	manyTensors := new(strings.Builder)
	manyTensors.WriteString(`{`)
	for i := range 20000 {
		if i > 0 {
			manyTensors.WriteString(",")
		}
		manyTensors.WriteString(`"` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + itoa(i) + `":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}`)
	}
	manyTensors.WriteString(`}`)
	cases := map[string][]byte{
		"2^63 header length":      withPrefix(1<<63, "{}"),
		"100MB header, tiny file": withPrefix(MaxHeaderLen, "{}"),
		"1M-entry shape":          build(longShape, 0),
		"1M-entry shape, invalid": build(longShape[:len(longShape)-1], 0),
		"20k tensors":             build(manyTensors.String(), 0),
		"deep nesting":            build(`{"__metadata__":`+deep(100000)+`}`, 0),
		"many escapes":            build(`{"__metadata__":{"k":"`+strings.Repeat(`\u00e9`, 1<<18)+`"}}`, 0),
	}
	for name, file := range cases {
		var err error
		got := allocBytes(func() { _, err = NewReader(bytes.NewReader(file), int64(len(file))) })
		limit := uint64(16*len(file) + 64<<10)
		t.Logf("%s: %d-byte input, %d bytes allocated, err=%v", name, len(file), got, err)
		if got > limit {
			t.Errorf("%s: allocated %d bytes for a %d-byte input (limit %d)", name, got, len(file), limit)
		}
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// sparseFile is an io.ReaderAt over a file of the given size whose first
// bytes are head and the rest zeros, without storing them.
type sparseFile struct {
	head  []byte
	size  int64
	reads int64 // bytes read, for the test's information (not concurrency safe)
}

func (s *sparseFile) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= s.size {
		return 0, io.EOF
	}
	n := len(b)
	if rem := s.size - off; int64(n) > rem {
		n = int(rem)
	}
	k := 0
	if off < int64(len(s.head)) {
		k = copy(b[:n], s.head[off:])
	}
	clear(b[k:n])
	s.reads += int64(n)
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// TestSparse100GB opens a "100 GB" checkpoint and requires NewReader to
// read and allocate only about the header.
func TestSparse100GB(t *testing.T) {
	var specs []TensorSpec
	for i := range 100 {
		specs = append(specs, TensorSpec{Name: "model.layers." + itoa(i) + ".weight", DType: dtype.BF16, Shape: []int64{25000, 20000}})
	}
	p, err := NewPlan(map[string]string{"format": "pt"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	if p.FileSize() < 100e9 {
		t.Fatalf("file is only %d bytes", p.FileSize())
	}
	sf := &sparseFile{head: p.Header, size: p.FileSize()}
	var r *Reader
	got := allocBytes(func() { r, err = NewReader(sf, sf.size) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("opened %d-byte file: read %d bytes, allocated %d bytes", sf.size, sf.reads, got)
	if got > 1<<20 || sf.reads != int64(len(p.Header)) {
		t.Fatalf("allocated %d bytes, read %d bytes; want < 1 MiB and %d", got, sf.reads, len(p.Header))
	}
	last := r.Tensors()[len(r.Tensors())-1]
	if last.End+r.DataOffset() != sf.size {
		t.Fatalf("last tensor ends at %d", last.End)
	}
	sr := r.SectionReader(last)
	buf := make([]byte, 16)
	if n, err := sr.ReadAt(buf, last.Size()-16); n != 16 || err != nil {
		t.Fatalf("reading the end of the last tensor: %d, %v", n, err)
	}
	if _, err := sr.ReadAt(buf, last.Size()-8); err != io.EOF {
		t.Fatalf("reading past the tensor: %v", err)
	}
}

// TestDifferentialNLPOdyssey compares the reader with
// github.com/nlpodyssey/safetensors on every golden file.
func TestDifferentialNLPOdyssey(t *testing.T) {
	for _, path := range goldenFiles(t) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := nlp.Deserialize(b)
		if err != nil {
			t.Fatalf("%s: nlpodyssey: %v", path, err)
		}
		r, err := NewReader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		if ref.Len() != len(r.Tensors()) {
			t.Fatalf("%s: %d tensors, nlpodyssey %d", path, len(r.Tensors()), ref.Len())
		}
		for _, nt := range ref.Tensors() {
			ti, ok := r.Tensor(nt.Name)
			if !ok {
				t.Fatalf("%s: tensor %q missing", path, nt.Name)
			}
			v := nt.TensorView
			if ti.DType.String() != v.DType().String() || len(ti.Shape) != len(v.Shape()) {
				t.Fatalf("%s: %q: %s %v vs %s %v", path, nt.Name, ti.DType, ti.Shape, v.DType(), v.Shape())
			}
			for i, d := range v.Shape() {
				if uint64(ti.Shape[i]) != d {
					t.Fatalf("%s: %q: shape %v vs %v", path, nt.Name, ti.Shape, v.Shape())
				}
			}
			data, err := r.ReadTensor(nt.Name)
			if err != nil || !bytes.Equal(data, v.Data()) {
				t.Fatalf("%s: %q: data differs (%v)", path, nt.Name, err)
			}
		}
		n, md, err := nlp.ReadMetadata(b)
		if err != nil || int64(n) != r.HeaderLen() {
			t.Fatalf("%s: nlpodyssey header length %d (%v), ours %d", path, n, err, r.HeaderLen())
		}
		if len(md.Metadata()) != len(r.Metadata()) {
			t.Fatalf("%s: metadata %v vs %v", path, r.Metadata(), md.Metadata())
		}
		for k, v := range md.Metadata() {
			if r.Metadata()[k] != v {
				t.Fatalf("%s: metadata %q: %q vs %q", path, k, r.Metadata()[k], v)
			}
		}
	}
}

// TestConcurrentSectionReaders reads every tensor of a file from many
// goroutines at once (run with -race).
func TestConcurrentSectionReaders(t *testing.T) {
	path := "../../testdata/golden/vectors.safetensors"
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ts := f.Tensors()
	const workers = 16
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(ts); i += workers / 2 { // overlapping subsets
				ti := ts[i]
				got, err := io.ReadAll(f.SectionReader(ti))
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, whole[f.DataOffset()+ti.Begin:f.DataOffset()+ti.End]) {
					errs <- errors.New("tensor " + ti.Name + " differs")
					return
				}
				if _, ok := f.Tensor(ti.Name); !ok {
					errs <- errors.New("lookup failed")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkOpenHeader(b *testing.B) {
	file, err := os.ReadFile("../../testdata/golden/vectors.safetensors")
	if err != nil {
		b.Fatal(err)
	}
	r, err := NewReader(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		b.Fatal(err)
	}
	head := &sparseFile{head: file[:r.DataOffset()], size: int64(len(file))}
	b.SetBytes(r.DataOffset())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewReader(head, head.size); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlan(b *testing.B) {
	f, err := Open("../../testdata/golden/vectors.safetensors")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var specs []TensorSpec
	for _, ti := range f.Tensors() {
		specs = append(specs, TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape})
	}
	b.SetBytes(f.DataOffset())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewPlan(f.Metadata(), specs); err != nil {
			b.Fatal(err)
		}
	}
}
