package safetensors

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

// referenceFiles are the files in testdata written by the reference
// writer (safetensors 0.8.0 via transformers / safetensors.torch).
// vectors.safetensors is left out: it was not written in reference order.
func referenceFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob("../../testdata/golden/models/*/model*.safetensors")
	if err != nil || len(files) < 20 {
		t.Fatalf("golden models missing: %v %v", files, err)
	}
	return append(files, "../../testdata/golden/vectors-wide.safetensors")
}

// TestPlanReproducesGolden re-plans every reference file from its own
// tensor list and metadata, streams the same data through a Writer, and
// requires the result to be byte-identical to the file.
func TestPlanReproducesGolden(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, path := range referenceFiles(t) {
		t.Run(strings.TrimPrefix(path, "../../testdata/golden/"), func(t *testing.T) {
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var specs []TensorSpec
			for _, ti := range f.Tensors() {
				specs = append(specs, TensorSpec{Name: ti.Name, DType: ti.DType, Shape: ti.Shape})
			}
			rng.Shuffle(len(specs), func(i, j int) { specs[i], specs[j] = specs[j], specs[i] })
			p, err := NewPlan(f.Metadata(), specs)
			if err != nil {
				t.Fatal(err)
			}
			if p.FileSize() != int64(len(want)) || p.DataOffset() != f.DataOffset() {
				t.Fatalf("plan: file size %d, data offset %d; file: %d, %d", p.FileSize(), p.DataOffset(), len(want), f.DataOffset())
			}
			if !bytes.Equal(p.Header, want[:len(p.Header)]) {
				t.Fatalf("header differs:\n got %q\nwant %q", firstDiff(p.Header, want), firstDiff(want[:len(p.Header)], p.Header))
			}
			var out bytes.Buffer
			w, err := NewWriter(&out, p)
			if err != nil {
				t.Fatal(err)
			}
			for _, pt := range p.Tensors {
				src, ok := f.Tensor(pt.Name)
				if !ok {
					t.Fatalf("planned tensor %q not in file", pt.Name)
				}
				if err := w.WriteTensor(pt.Name, f.SectionReader(src)); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("written file differs from %s at byte %d", path, len(commonPrefix(out.Bytes(), want)))
			}
		})
	}
}

func commonPrefix(a, b []byte) []byte {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return a[:n]
}

// firstDiff returns a window of a around its first difference from b.
func firstDiff(a, b []byte) []byte {
	n := len(commonPrefix(a, b))
	return a[max(0, n-40):min(len(a), n+40)]
}

func TestPlanLayoutAndJSON(t *testing.T) {
	specs := []TensorSpec{
		{Name: "b", DType: dtype.U8, Shape: []int64{3}},
		{Name: "a", DType: dtype.U8, Shape: []int64{2, 1}},
		{Name: "z", DType: dtype.F32, Shape: nil},
		{Name: "e", DType: dtype.BF16, Shape: []int64{0, 4}},
		{Name: "q\"\\\n\t\x01\x7fé", DType: dtype.F4, Shape: []int64{2}},
	}
	p, err := NewPlan(map[string]string{"z": "1", "a": "x\ty"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	// Written by hand from the reference rules: dtype descending
	// (F32 > BF16 > U8 > F4), then name; serde_json escaping.
	wantJSON := `{"__metadata__":{"a":"x\ty","z":"1"},` +
		`"z":{"dtype":"F32","shape":[],"data_offsets":[0,4]},` +
		`"e":{"dtype":"BF16","shape":[0,4],"data_offsets":[4,4]},` +
		`"a":{"dtype":"U8","shape":[2,1],"data_offsets":[4,6]},` +
		`"b":{"dtype":"U8","shape":[3],"data_offsets":[6,9]},` +
		`"q\"\\\n\t\u0001` + "\x7fé" + `":{"dtype":"F4","shape":[2],"data_offsets":[9,10]}}`
	for len(wantJSON)%8 != 0 {
		wantJSON += " "
	}
	if got := string(p.Header[8:]); got != wantJSON {
		t.Fatalf("header JSON\n got %s\nwant %s", got, wantJSON)
	}
	if n := int(p.Header[0]) | int(p.Header[1])<<8; n != len(wantJSON) || p.DataSize != 10 {
		t.Fatalf("prefix %d data %d, want %d 10", n, p.DataSize, len(wantJSON))
	}
	// Specs are not reordered in place.
	if specs[0].Name != "b" {
		t.Fatal("NewPlan modified specs")
	}
}

func TestPlanMetadataNilVsEmpty(t *testing.T) {
	p, err := NewPlan(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The reference writer's empty-file bytes (safetensors tensor.rs test_empty).
	if want := "\x08\x00\x00\x00\x00\x00\x00\x00{}      "; string(p.Header) != want {
		t.Fatalf("got %q want %q", p.Header, want)
	}
	p, err = NewPlan(map[string]string{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"__metadata__":{}}     `; string(p.Header[8:]) != want {
		t.Fatalf("got %q want %q", p.Header[8:], want)
	}
}

func TestPlanErrors(t *testing.T) {
	cases := map[string][]TensorSpec{
		"duplicate": {{Name: "a", DType: dtype.U8}, {Name: "a", DType: dtype.U8}},
		"reserved":  {{Name: "__metadata__", DType: dtype.U8}},
		"dtype":     {{Name: "a"}},
		"negative":  {{Name: "a", DType: dtype.U8, Shape: []int64{-1}}},
		"overflow":  {{Name: "a", DType: dtype.U8, Shape: []int64{1 << 32, 1 << 32}}},
		"bits":      {{Name: "a", DType: dtype.F64, Shape: []int64{1 << 60}}},
		"subbyte":   {{Name: "a", DType: dtype.F6_E2M3, Shape: []int64{3}}},
		"total":     {{Name: "a", DType: dtype.U8, Shape: []int64{1 << 62}}, {Name: "b", DType: dtype.U8, Shape: []int64{1 << 62}}},
		"utf8":      {{Name: "\xff", DType: dtype.U8}},
	}
	for name, specs := range cases {
		if _, err := NewPlan(nil, specs); err == nil || !strings.HasPrefix(err.Error(), "safetensors: ") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func planFor(t *testing.T) *Plan {
	t.Helper()
	p, err := NewPlan(nil, []TensorSpec{
		{Name: "a", DType: dtype.F32, Shape: []int64{2}},
		{Name: "empty", DType: dtype.U8, Shape: []int64{0}},
		{Name: "b", DType: dtype.U8, Shape: []int64{3}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWriterTooFewBytes(t *testing.T) {
	p := planFor(t)
	w, err := NewWriter(io.Discard, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	err = w.Close()
	if !errors.Is(err, ErrDataSize) || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("Close after 10 of 11 bytes: %v", err)
	}
}

func TestWriterTooManyBytes(t *testing.T) {
	p := planFor(t)
	var buf bytes.Buffer
	w, err := NewWriter(&buf, p)
	if err != nil {
		t.Fatal(err)
	}
	n, err := w.Write(make([]byte, 12))
	if n != 11 || !errors.Is(err, ErrDataSize) {
		t.Fatalf("Write(12 of 11) = %d, %v", n, err)
	}
	if _, err := w.Write([]byte{1}); err == nil {
		t.Fatal("error is not sticky")
	}
	if err := w.Close(); !errors.Is(err, ErrDataSize) {
		t.Fatalf("Close = %v", err)
	}
	if int64(buf.Len()) != p.FileSize() {
		t.Fatalf("wrote %d bytes, want %d", buf.Len(), p.FileSize())
	}
}

func TestWriteTensorOrder(t *testing.T) {
	p := planFor(t)
	w, err := NewWriter(io.Discard, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor("b", bytes.NewReader(make([]byte, 3))); err == nil {
		t.Fatal("out-of-order tensor accepted")
	}
	if err := w.WriteTensor("nope", bytes.NewReader(nil)); !errors.Is(err, ErrNoTensor) {
		t.Fatalf("unknown tensor: %v", err)
	}
	if err := w.WriteTensor("a", bytes.NewReader(make([]byte, 4))); !errors.Is(err, ErrDataSize) {
		t.Fatalf("short source: %v", err)
	}
}

// failWriter fails after n bytes.
type failWriter struct{ n int }

var errFail = errors.New("disk full")

func (f *failWriter) Write(b []byte) (int, error) {
	if len(b) <= f.n {
		f.n -= len(b)
		return len(b), nil
	}
	n := f.n
	f.n = 0
	return n, errFail
}

func TestWriterUnderlyingError(t *testing.T) {
	p := planFor(t)
	if _, err := NewWriter(&failWriter{n: 3}, p); !errors.Is(err, errFail) {
		t.Fatalf("header write error: %v", err)
	}
	w, err := NewWriter(&failWriter{n: len(p.Header) + 9}, p)
	if err != nil {
		t.Fatal(err)
	}
	n, err := w.Write(make([]byte, 11))
	if n != 9 || !errors.Is(err, errFail) || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if err := w.Close(); !errors.Is(err, errFail) {
		t.Fatalf("Close = %v", err)
	}
}

// TestRoundTrip writes random tensors and reads them back.
func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	all := dtype.All()
	for iter := 0; iter < 200; iter++ {
		var specs []TensorSpec
		data := map[string][]byte{}
		for i := range rng.IntN(8) {
			d := all[rng.IntN(len(all))]
			shape := make([]int64, rng.IntN(4))
			for k := range shape {
				shape[k] = int64(rng.IntN(5))
			}
			if d.Bits()%8 != 0 {
				shape = append(shape, 8) // whole bytes
			}
			s := TensorSpec{Name: string(rune('a'+rng.IntN(3))) + string(rune('0'+i)), DType: d, Shape: shape}
			specs = append(specs, s)
		}
		var md map[string]string
		if rng.IntN(2) == 0 {
			md = map[string]string{"format": "pt", "k\n\"": "v\x00é"}
		}
		p, err := NewPlan(md, specs)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		w, err := NewWriter(&buf, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, ti := range p.Tensors {
			b := make([]byte, ti.Size())
			for k := range b {
				b[k] = byte(rng.Uint32())
			}
			data[ti.Name] = b
			if _, err := w.Write(b); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
		if err != nil {
			t.Fatalf("reading back %q: %v", p.Header, err)
		}
		if len(r.Tensors()) != len(specs) || len(r.Metadata()) != len(md) {
			t.Fatalf("got %d tensors, %d metadata", len(r.Tensors()), len(r.Metadata()))
		}
		for k, v := range md {
			if r.Metadata()[k] != v {
				t.Fatalf("metadata %q = %q, want %q", k, r.Metadata()[k], v)
			}
		}
		for _, s := range specs {
			ti, ok := r.Tensor(s.Name)
			if !ok || ti.DType != s.DType || !equalShape(ti.Shape, s.Shape) {
				t.Fatalf("tensor %q: got %+v, want %+v", s.Name, ti, s)
			}
			got, err := r.ReadTensor(s.Name)
			if err != nil || !bytes.Equal(got, data[s.Name]) {
				t.Fatalf("tensor %q data: %v", s.Name, err)
			}
		}
	}
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
