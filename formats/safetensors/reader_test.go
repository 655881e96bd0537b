package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

// build returns a file with the given header (not padded) and dataLen
// data bytes (0, 1, 2, ...).
func build(header string, dataLen int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	for i := range dataLen {
		b = append(b, byte(i))
	}
	return b
}

// withPrefix returns a file whose 8-byte prefix says n, followed by rest.
func withPrefix(n uint64, rest string) []byte {
	return append(binary.LittleEndian.AppendUint64(nil, n), rest...)
}

const (
	f32x1   = `{"dtype":"F32","shape":[1],"data_offsets":[0,4]}`
	oneF32  = `{"a":` + f32x1 + `}`
	twoF32  = `{"a":` + f32x1 + `,"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`
	deepArr = `[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`
)

func deep(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }

type fixture struct {
	name string
	file []byte
}

// codeFixtures has, for every Code, files that break exactly that rule,
// and look-alike files that are valid.
var codeFixtures = map[Code]struct{ bad, good []fixture }{
	CodeTooShort: {
		bad:  []fixture{{"empty", nil}, {"7 bytes", []byte("\x02\x00\x00\x00\x00\x00\x00")}},
		good: []fixture{{"smallest file", build("{}", 0)}},
	},
	CodeHeaderTooLarge: {
		bad: []fixture{
			{"100MB+1", withPrefix(MaxHeaderLen+1, "{}")},
			{"2^63", withPrefix(1<<63, "{}")},
			{"2^64-1", withPrefix(1<<64-1, "{}")},
		},
		good: []fixture{{"8-byte header", build(`{}      `, 0)}},
	},
	CodeHeaderOutOfBounds: {
		bad: []fixture{
			{"one past", withPrefix(3, "{}")},
			{"header fits only without prefix", withPrefix(10, "{}        ")[:16]},
		},
		good: []fixture{{"exact", withPrefix(2, "{}")}},
	},
	CodeHeaderNotUTF8: {
		bad: []fixture{
			{"bad byte in name", build("{\"a\xff\":"+f32x1+"}", 4)},
			{"surrogate encoded as UTF-8", build("{\"__metadata__\":{\"k\":\"\xed\xa0\x80\"}}", 0)},
		},
		good: []fixture{{"UTF-8 name", build(`{"aé✓":`+f32x1+`}`, 4)}},
	},
	CodeHeaderInvalidJSON: {
		bad: []fixture{
			{"NUL padding", build(oneF32+"\x00\x00\x00", 4)},
			{"empty header", build("", 0)},
			{"trailing comma", build(`{"a":`+f32x1+`,}`, 4)},
			{"unterminated", build(`{"a":`+f32x1, 4)},
			{"garbage after object", build(oneF32+"x", 4)},
			{"lone surrogate", build(`{"__metadata__":{"k":"\ud800"}}`, 0)},
			{"bad escape", build(`{"__metadata__":{"k":"\x"}}`, 0)},
			{"control char in string", build("{\"__metadata__\":{\"k\":\"a\tb\"}}", 0)},
			{"too deep", build(`{"__metadata__":{"k":`+deep(200)+`}}`, 0)},
			{"leading zero", build(`{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}`, 4)},
			{"single quotes", build(`{'a':1}`, 0)},
		},
		good: []fixture{
			{"space padding", build(oneF32+"   ", 4)},
			{"whitespace padding", build(oneF32+" \t\r\n", 4)},
			{"escapes", build(`{"__metadata__":{"k\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00":"v"}}`, 0)},
			{"whitespace inside", build("{ \"a\" :\n{ \"dtype\" : \"F32\" , \"shape\" : [ 1 ] , \"data_offsets\" : [ 0 , 4 ] } }", 4)},
		},
	},
	CodeHeaderNotObject: {
		bad: []fixture{
			{"array", build(`[]`, 0)},
			{"string", build(`"{}"`, 0)},
			{"null", build(`null      `, 0)},
			{"leading space", build(` {}`, 0)},
		},
		good: []fixture{{"object", build(`{}`, 0)}},
	},
	CodeDuplicateKey: {
		bad: []fixture{
			{"tensor", build(`{"a":`+f32x1+`,"a":`+f32x1+`}`, 4)},
			{"metadata", build(`{"__metadata__":{},"__metadata__":{}}`, 0)},
			{"metadata key", build(`{"__metadata__":{"k":"1","k":"2"}}`, 0)},
			{"entry key", build(`{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4)},
		},
		good: []fixture{
			{"distinct", build(twoF32, 8)},
			{"metadata key equal to tensor name", build(`{"__metadata__":{"a":"1"},"a":`+f32x1+`}`, 4)},
		},
	},
	CodeMetadataType: {
		bad: []fixture{
			{"number value", build(`{"__metadata__":{"k":1}}`, 0)},
			{"null", build(`{"__metadata__":null}`, 0)},
			{"string", build(`{"__metadata__":"pt"}`, 0)},
			{"nested", build(`{"__metadata__":{"k":{"x":"y"}}}`, 0)},
		},
		good: []fixture{
			{"strings", build(`{"__metadata__":{"format":"pt","":""}}`, 0)},
			{"empty", build(`{"__metadata__":{}}`, 0)},
		},
	},
	CodeTensorEntry: {
		bad: []fixture{
			{"array entry", build(`{"a":["F32",[1],[0,4]]}`, 4)},
			{"missing shape", build(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, 4)},
			{"missing dtype", build(`{"a":{"shape":[1],"data_offsets":[0,4]}}`, 4)},
			{"missing offsets", build(`{"a":{"dtype":"F32","shape":[1]}}`, 4)},
			{"unknown key", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":0}}`, 4)},
			{"float dim", build(`{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}`, 4)},
			{"exponent dim", build(`{"a":{"dtype":"F32","shape":[1e0],"data_offsets":[0,4]}}`, 4)},
			{"negative dim", build(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4)},
			{"minus zero dim", build(`{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}`, 0)},
			{"string dim", build(`{"a":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}}`, 4)},
			{"three offsets", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}`, 4)},
			{"one offset", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4]}}`, 4)},
			{"float offset", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}}`, 4)},
			{"dtype number", build(`{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, 4)},
			{"shape object", build(`{"a":{"dtype":"F32","shape":{},"data_offsets":[0,4]}}`, 4)},
			{"null entry", build(`{"a":null}`, 0)},
		},
		good: []fixture{
			{"keys in any order", build(`{"a":{"data_offsets":[0,4],"shape":[1],"dtype":"F32"}}`, 4)},
			{"scalar", build(`{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}`, 4)},
			{"empty name", build(`{"":`+f32x1+`}`, 4)},
		},
	},
	CodeUnknownDType: {
		bad: []fixture{
			{"lowercase", build(`{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}`, 4)},
			{"F128", build(`{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}`, 16)},
			{"torch name", build(`{"a":{"dtype":"float32","shape":[1],"data_offsets":[0,4]}}`, 4)},
		},
		good: []fixture{
			{"F8_E8M0", build(`{"a":{"dtype":"F8_E8M0","shape":[4],"data_offsets":[0,4]}}`, 4)},
			{"C64", build(`{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}`, 8)},
		},
	},
	CodeSizeOverflow: {
		bad: []fixture{
			{"elements", build(`{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`, 0)},
			{"bits", build(`{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}`, 0)},
			{"dim > int64", build(`{"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]}}`, 0)},
			{"zero after overflow", build(`{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}`, 0)},
		},
		good: []fixture{
			{"zero first", build(`{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}`, 0)},
			{"max int64 dim", build(`{"a":{"dtype":"U8","shape":[9223372036854775807,0],"data_offsets":[0,0]}}`, 0)},
		},
	},
	CodeSubByteSize: {
		bad: []fixture{
			{"F4 odd", build(`{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`, 2)},
			{"F6 x2", build(`{"a":{"dtype":"F6_E2M3","shape":[2],"data_offsets":[0,2]}}`, 2)},
		},
		good: []fixture{
			{"F4 even", build(`{"a":{"dtype":"F4","shape":[3,2],"data_offsets":[0,3]}}`, 3)},
			{"F6 x4", build(`{"a":{"dtype":"F6_E3M2","shape":[4],"data_offsets":[0,3]}}`, 3)},
		},
	},
	CodeSizeMismatch: {
		bad: []fixture{
			{"too big", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}`, 8)},
			{"too small", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4)},
			{"empty range, one element", build(`{"a":{"dtype":"F32","shape":[],"data_offsets":[0,0]}}`, 0)},
		},
		good: []fixture{{"match", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8)}},
	},
	CodeOffsetsInvalid: {
		bad: []fixture{
			{"reversed", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}`, 4)},
			{"negative", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, 4)},
		},
		good: []fixture{{"ordered", build(oneF32, 4)}},
	},
	CodeOffsetsGap: {
		bad: []fixture{
			{"hole", build(`{"a":`+f32x1+`,"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, 12)},
			{"not from 0", build(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8)},
		},
		good: []fixture{
			{"contiguous", build(twoF32, 8)},
			{"header order differs from data order", build(`{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":`+f32x1+`}`, 8)},
		},
	},
	CodeOffsetsOverlap: {
		bad: []fixture{
			{"overlap", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12)},
			{"contained", build(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 12)},
			{"same start", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":`+f32x1+`}`, 8)},
			{"empty inside", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}}`, 8)},
		},
		good: []fixture{
			{"adjacent", build(twoF32, 8)},
			{"empty at boundary", build(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"U8","shape":[0],"data_offsets":[8,8]}}`, 8)},
		},
	},
	CodeOffsetsShared: {
		bad: []fixture{
			{"aliased", build(`{"a":`+f32x1+`,"b":`+f32x1+`}`, 4)},
			{"aliased, other dtype", build(`{"a":`+f32x1+`,"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, 4)},
		},
		good: []fixture{
			{"empties share offsets", build(`{"e1":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"e2":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]},"a":`+f32x1+`,"e3":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}}`, 4)},
			{"only empties", build(`{"e1":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"e2":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}`, 0)},
		},
	},
	CodeDataOutOfBounds: {
		bad: []fixture{
			{"truncated", build(twoF32, 6)},
			{"offset > int64", build(`{"a":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551616,18446744073709551616]}}`, 0)},
			{"offset near int64 max", build(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[9223372036854775806,9223372036854775807]}}`, 1)},
		},
		good: []fixture{{"complete", build(twoF32, 8)}},
	},
	CodeTrailingBytes: {
		bad: []fixture{
			{"one extra", build(twoF32, 9)},
			{"no tensors, data", build(`{}`, 1)},
			{"polyglot zip", append(build(oneF32, 4), "PK\x05\x06"+strings.Repeat("\x00", 18)...)},
		},
		good: []fixture{{"exact", build(twoF32, 8)}},
	},
	CodeRankTooLarge: {
		bad: []fixture{
			{"rank 65", build(`{"a":{"dtype":"U8","shape":[`+strings.Repeat("1,", 64)+`1],"data_offsets":[0,1]}}`, 1)},
			{"a million 1s", build(`{"a":{"dtype":"U8","shape":[`+strings.Repeat("1,", 999_999)+`1],"data_offsets":[0,1]}}`, 1)},
		},
		good: []fixture{{"rank 64", build(`{"a":{"dtype":"U8","shape":[`+strings.Repeat("1,", 63)+`1],"data_offsets":[0,1]}}`, 1)}},
	},
}

func TestEveryCodeHasFixtures(t *testing.T) {
	for _, c := range Codes() {
		fx, ok := codeFixtures[c]
		if !ok || len(fx.bad) == 0 || len(fx.good) == 0 {
			t.Errorf("code %d (%s) has no bad or no good fixture", c, c)
		}
		if strings.HasPrefix(c.String(), "Code(") {
			t.Errorf("code %d has no name", c)
		}
	}
	if got := Code(0).String(); got != "Code(0)" {
		t.Errorf("Code(0).String() = %q", got)
	}
}

func TestCodeFixtures(t *testing.T) {
	for code, fx := range codeFixtures {
		for _, f := range fx.bad {
			t.Run(code.String()+"/bad/"+f.name, func(t *testing.T) {
				_, err := NewReader(bytes.NewReader(f.file), int64(len(f.file)))
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("err = %v, want a *FormatError", err)
				}
				if fe.Code != code {
					t.Fatalf("code %s, want %s: %v", fe.Code, code, err)
				}
				if !errors.Is(err, ErrFormat) || !strings.HasPrefix(err.Error(), "safetensors: ") {
					t.Fatalf("error %q does not match ErrFormat or lacks the prefix", err)
				}
				if fe.Offset < 0 || fe.Offset > int64(len(f.file)) {
					t.Errorf("offset %d outside the %d-byte file", fe.Offset, len(f.file))
				}
			})
		}
		for _, f := range fx.good {
			t.Run(code.String()+"/good/"+f.name, func(t *testing.T) {
				r, err := NewReader(bytes.NewReader(f.file), int64(len(f.file)))
				if err != nil {
					t.Fatal(err)
				}
				checkReader(t, r, f.file)
			})
		}
	}
}

// checkReader checks the invariants of a Reader over file.
func checkReader(t testing.TB, r *Reader, file []byte) {
	t.Helper()
	if r.DataOffset() != 8+r.HeaderLen() || r.Size() != int64(len(file)) {
		t.Fatalf("DataOffset %d HeaderLen %d Size %d", r.DataOffset(), r.HeaderLen(), r.Size())
	}
	var pos int64
	for i, ti := range r.Tensors() {
		if ti.Begin < 0 || ti.End > r.Size()-r.DataOffset() || ti.Begin > ti.End {
			t.Fatalf("tensor %q [%d,%d] out of bounds", ti.Name, ti.Begin, ti.End)
		}
		if ti.Size() > 0 {
			if ti.Begin != pos {
				t.Fatalf("tensor %q starts at %d, want %d", ti.Name, ti.Begin, pos)
			}
			pos = ti.End
		}
		if ti.NumElements()*int64(ti.DType.Bits()) != 8*ti.Size() {
			t.Fatalf("tensor %q: %d elements of %s in %d bytes", ti.Name, ti.NumElements(), ti.DType, ti.Size())
		}
		if got, ok := r.Tensor(ti.Name); !ok || got.Begin != ti.Begin {
			t.Fatalf("Tensor(%q) = %+v, %v", ti.Name, got, ok)
		}
		if i > 0 && r.Tensors()[i-1].Begin > ti.Begin {
			t.Fatal("tensors not in offset order")
		}
		if ti.Size() <= 1<<20 {
			b, err := r.ReadTensor(ti.Name)
			if err != nil || !bytes.Equal(b, file[r.DataOffset()+ti.Begin:r.DataOffset()+ti.End]) {
				t.Fatalf("ReadTensor(%q): %v", ti.Name, err)
			}
		}
	}
	if pos != r.Size()-r.DataOffset() {
		t.Fatalf("tensors cover %d of %d data bytes", pos, r.Size()-r.DataOffset())
	}
}

func TestReaderAPI(t *testing.T) {
	file := build(`{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[4,16]},"s":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}`, 16)
	r, err := NewReader(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	ts := r.Tensors()
	if len(ts) != 2 || ts[0].Name != "s" || ts[1].Name != "w" {
		t.Fatalf("Tensors() = %+v", ts)
	}
	w, _ := r.Tensor("w")
	if w.DType != dtype.BF16 || !equalShape(w.Shape, []int64{2, 3}) || w.NumElements() != 6 || w.Size() != 12 {
		t.Fatalf("w = %+v", w)
	}
	s, _ := r.Tensor("s")
	if s.Shape == nil || len(s.Shape) != 0 || s.NumElements() != 1 {
		t.Fatalf("scalar shape %#v", s.Shape)
	}
	if r.Metadata()["format"] != "pt" {
		t.Fatalf("metadata %v", r.Metadata())
	}
	got, err := io.ReadAll(r.SectionReader(w))
	if err != nil || !bytes.Equal(got, file[r.DataOffset()+4:]) {
		t.Fatalf("SectionReader: %v %v", got, err)
	}
	if _, err := r.ReadTensor("nope"); !errors.Is(err, ErrNoTensor) {
		t.Fatalf("ReadTensor(nope) = %v", err)
	}
	if _, ok := r.Tensor("nope"); ok {
		t.Fatal("Tensor(nope) found")
	}
	r2, _ := NewReader(bytes.NewReader(build("{}", 0)), 10)
	if r2.Metadata() != nil || len(r2.Tensors()) != 0 {
		t.Fatal("empty file has metadata or tensors")
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(bad, build(twoF32, 9), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(bad)
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Code != CodeTrailingBytes || !strings.HasPrefix(err.Error(), bad+": safetensors: ") {
		t.Fatalf("Open(bad) = %v", err)
	}
	if _, err := Open(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("Open(missing) = %v", err)
	}
	if _, err := Open(dir); err == nil || errors.As(err, &fe) && fe.Code == CodeTooShort {
		t.Fatalf("Open(dir) = %v", err)
	}
	good := filepath.Join(dir, "good.safetensors")
	if err := os.WriteFile(good, build(twoF32, 8), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(good)
	if err != nil {
		t.Fatal(err)
	}
	if f.Name() != good || len(f.Tensors()) != 2 {
		t.Fatalf("Name %q, %d tensors", f.Name(), len(f.Tensors()))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// errReaderAt fails every read.
type errReaderAt struct{}

var errIO = errors.New("I/O error")

func (errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, errIO }

func TestReaderIOError(t *testing.T) {
	_, err := NewReader(errReaderAt{}, 100)
	var fe *FormatError
	if !errors.Is(err, errIO) || errors.As(err, &fe) {
		t.Fatalf("err = %v", err)
	}
	// A file that shrank: the size says more than ReadAt delivers.
	file := build(oneF32, 4)
	_, err = NewReader(bytes.NewReader(file[:12]), int64(len(file)))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short read: %v", err)
	}
}

func TestGoldenFilesOpen(t *testing.T) {
	files, _ := filepath.Glob("../../testdata/golden/models/*/*.safetensors")
	more, _ := filepath.Glob("../../testdata/golden/*.safetensors")
	files = append(files, more...)
	if len(files) < 25 {
		t.Fatalf("only %d golden files", len(files))
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewReader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		checkReader(t, r, b)
	}
}
