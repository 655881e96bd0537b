package bnb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// The golden files hold inputs and outputs of the real bitsandbytes CUDA
// kernels (see testdata/golden/README.md). Every comparison below is between
// our output and those bytes.
var (
	goldenVectors     = filepath.Join("..", "..", "testdata", "golden", "vectors.safetensors")
	goldenVectorsWide = filepath.Join("..", "..", "testdata", "golden", "vectors-wide.safetensors")
)

// pendingCUDAMeanCases lists the double-quant cases whose nested_offset
// (and therefore nested_absmax, possibly some codes, and the JSON bytes)
// are expected to differ from bitsandbytes until cudaMeanF32 reproduces
// torch's float32 CUDA mean bit for bit. Key: "<file>:<case>". The mean
// helper empties this list; the test fails on entries that match already.
//
// It is empty since cudaMeanF32 emulates torch's reduction: every golden
// case matches end to end. (With the earlier placeholder, the correctly
// rounded mean, it held vectors-wide.safetensors:f32_fp4_bs64_dq and
// :f32_nf4_bs64_dq, whose offsets were 1 ulp low.)
var pendingCUDAMeanCases = map[string]bool{}

// gtFile is a golden safetensors file loaded whole.
type gtFile struct {
	name    string
	tensors map[string]gtTensor
}

type gtTensor struct {
	dt    dtype.DType
	shape []int64
	data  []byte
}

func gtOpen(t *testing.T, path string) *gtFile { return gtOpenF(t, path) }

func gtOpenF(t testing.TB, path string) *gtFile {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g := &gtFile{name: filepath.Base(path), tensors: map[string]gtTensor{}}
	for _, ti := range f.Tensors() {
		b, err := f.ReadTensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		g.tensors[ti.Name] = gtTensor{ti.DType, ti.Shape, b}
	}
	return g
}

func (g *gtFile) get(t *testing.T, name string) gtTensor {
	t.Helper()
	v, ok := g.tensors[name]
	if !ok {
		t.Fatalf("%s: no tensor %q", g.name, name)
	}
	return v
}

// gtFloats widens a F32/BF16/F16 tensor to float32 values.
func gtFloats(t *testing.T, v gtTensor) []float32 {
	t.Helper()
	switch v.dt {
	case dtype.F32:
		out := make([]float32, len(v.data)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(v.data[4*i:]))
		}
		return out
	case dtype.BF16:
		out := make([]float32, len(v.data)/2)
		for i := range out {
			out[i] = dtype.BF16ToF32(binary.LittleEndian.Uint16(v.data[2*i:]))
		}
		return out
	case dtype.F16:
		out := make([]float32, len(v.data)/2)
		for i := range out {
			out[i] = dtype.F16ToF32(binary.LittleEndian.Uint16(v.data[2*i:]))
		}
		return out
	}
	t.Fatalf("unexpected dtype %v", v.dt)
	return nil
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// roundTo rounds float32 values to the dtype bitsandbytes returns and widens
// them back, like dequantize_4bit(...).float().
func roundTo(t *testing.T, v []float32, dt dtype.DType) []float32 {
	t.Helper()
	out := make([]float32, len(v))
	for i, x := range v {
		switch dt {
		case dtype.F32:
			out[i] = x
		case dtype.BF16:
			out[i] = dtype.BF16ToF32(dtype.F32ToBF16(x))
		case dtype.F16:
			out[i] = dtype.F16ToF32(dtype.F32ToF16(x))
		default:
			t.Fatalf("dtype %v", dt)
		}
	}
	return out
}

// goldenCase is one quantize_4bit call recorded in a golden file.
type goldenCase struct {
	name  string // prefix of the output keys; the packed weight is name+".weight"
	input string // key of the input tensor
	qt    QuantType
	bs    int
	dq    bool
}

func casesVectors(t *testing.T, g *gtFile) []goldenCase {
	var cs []goldenCase
	for name := range g.tensors {
		p, ok := strings.CutSuffix(name, ".weight")
		if !ok {
			continue
		}
		f := strings.Split(p, ".")
		if len(f) != 4 || !strings.HasPrefix(f[2], "b") || !strings.HasPrefix(f[3], "dq") {
			t.Fatalf("%s: unexpected key %q", g.name, name)
		}
		qt, ok := ParseQuantType(f[1])
		bs, err := strconv.Atoi(f[2][1:])
		if !ok || err != nil || (f[3] != "dq0" && f[3] != "dq1") {
			t.Fatalf("%s: unexpected key %q", g.name, name)
		}
		cs = append(cs, goldenCase{p, f[0] + ".input", qt, bs, f[3] == "dq1"})
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	return cs
}

func casesWide(t *testing.T, g *gtFile) []goldenCase {
	var cs []goldenCase
	for name := range g.tensors {
		p, ok := strings.CutSuffix(name, ".weight")
		if !ok {
			continue
		}
		f := strings.Split(p, "_") // <dt>_<qt>_bs<B>_<dq|nodq>
		if len(f) != 4 || !strings.HasPrefix(f[2], "bs") {
			t.Fatalf("%s: unexpected key %q", g.name, name)
		}
		qt, ok := ParseQuantType(f[1])
		bs, err := strconv.Atoi(f[2][2:])
		if !ok || err != nil || (f[3] != "dq" && f[3] != "nodq") {
			t.Fatalf("%s: unexpected key %q", g.name, name)
		}
		in := "input_" + f[0]
		if f[0] == "odd1000" {
			in = "input_odd1000_bf16"
		}
		cs = append(cs, goldenCase{p, in, qt, bs, f[3] == "dq"})
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	return cs
}

func TestGoldenVectors(t *testing.T) {
	g := gtOpen(t, goldenVectors)
	cs := casesVectors(t, g)
	if len(cs) != 7*2*8*2 {
		t.Fatalf("found %d cases, want %d", len(cs), 7*2*8*2)
	}
	runGolden(t, g, cs)
}

func TestGoldenVectorsWide(t *testing.T) {
	g := gtOpen(t, goldenVectorsWide)
	cs := casesWide(t, g)
	if len(cs) != 17 {
		t.Fatalf("found %d cases, want 17", len(cs))
	}
	runGolden(t, g, cs)
}

// runGolden checks every case and reports the cases whose result depends on
// the CUDA mean and differs, field by field.
func runGolden(t *testing.T, g *gtFile, cs []goldenCase) {
	var meanDiffs []string
	for _, c := range cs {
		t.Run(c.name, func(t *testing.T) {
			if d := checkGoldenCase(t, g, c); d != "" {
				meanDiffs = append(meanDiffs, d)
			}
		})
	}
	if len(meanDiffs) > 0 {
		t.Logf("%s: %d case(s) differ only through cudaMeanF32 (allowlisted in pendingCUDAMeanCases):\n%s",
			g.name, len(meanDiffs), strings.Join(meanDiffs, "\n"))
	}
}

func gtEqual(t *testing.T, what string, got, want []byte) bool {
	t.Helper()
	if bytes.Equal(got, want) {
		return true
	}
	if len(got) != len(want) {
		t.Errorf("%s: %d bytes, want %d", what, len(got), len(want))
		return false
	}
	n, first := 0, -1
	for i := range got {
		if got[i] != want[i] {
			if first < 0 {
				first = i
			}
			n++
		}
	}
	t.Errorf("%s: %d of %d bytes differ, first at %d: got %#02x want %#02x", what, n, len(got), first, got[first], want[first])
	return false
}

// checkGoldenCase compares one case. It returns a description of the
// fields that differ when the case is allowlisted in pendingCUDAMeanCases,
// and "" otherwise.
func checkGoldenCase(t *testing.T, g *gtFile, c goldenCase) string {
	in := g.get(t, c.input)
	src := gtFloats(t, in)
	n := int64(len(src))
	w := c.name + ".weight"

	packed := make([]byte, PackedBytes(n))
	absmax := make([]float32, NumBlocks(n, c.bs))
	QuantizeBlocks(packed, absmax, src, c.bs, c.qt)

	gw := g.get(t, w)
	if want := []int64{PackedBytes(n), 1}; !reflect.DeepEqual(gw.shape, want) {
		t.Errorf("golden packed shape %v, expected %v", gw.shape, want)
	}
	gtEqual(t, "packed weight", packed, gw.data)
	cb := CodeBook(c.qt)
	gtEqual(t, "quant_map", f32Bytes(cb[:]), g.get(t, w+".quant_map").data)

	blob := g.get(t, w+"."+QuantStateSuffix(c.qt)).data
	parsed, err := ParseQuantState(blob)
	if err != nil {
		t.Fatalf("ParseQuantState(golden): %v", err)
	}
	if got := parsed.MarshalPython(); !bytes.Equal(got, blob) {
		t.Errorf("golden JSON does not round-trip:\n got %s\nwant %s", got, blob)
	}
	st := QuantState{QuantType: c.qt, Blocksize: c.bs, DType: in.dt.TorchName(), Shape: in.shape}

	key := g.name + ":" + c.name
	var meanDiff []string
	wantState := st
	if !c.dq {
		gtEqual(t, "absmax", f32Bytes(absmax), g.get(t, w+".absmax").data)
		gtEqual(t, "quant state JSON", st.MarshalPython(), blob)
	} else {
		dm := DynamicMap()
		gtEqual(t, "nested_quant_map", f32Bytes(dm[:]), g.get(t, w+".nested_quant_map").data)
		wantCodes := g.get(t, w+".absmax").data
		wantNested := g.get(t, w+".nested_absmax").data

		// With bitsandbytes' own offset, everything after the mean must
		// match exactly; this does not depend on cudaMeanF32.
		codes := make([]byte, len(absmax))
		nested := make([]float32, NumBlocks(int64(len(absmax)), NestedBlocksize))
		doubleQuantInto(codes, nested, absmax, parsed.NestedOffset)
		gtEqual(t, "absmax codes (golden offset)", codes, wantCodes)
		gtEqual(t, "nested_absmax (golden offset)", f32Bytes(nested), wantNested)
		// A piece at a time (convert's quantization jobs), in pieces of
		// whole nested blocks: the same bytes.
		clear(codes)
		clear(nested)
		for b := 0; b < len(absmax); b += 2 * NestedBlocksize {
			e := min(b+2*NestedBlocksize, len(absmax))
			DoubleQuantOffset(codes[b:e], nested[b/NestedBlocksize:], absmax[b:e], parsed.NestedOffset)
		}
		gtEqual(t, "absmax codes (golden offset, in pieces)", codes, wantCodes)
		gtEqual(t, "nested_absmax (golden offset, in pieces)", f32Bytes(nested), wantNested)
		st2 := st
		st2.DoubleQuant, st2.NestedBlocksize, st2.NestedDType, st2.NestedOffset = true, NestedBlocksize, "float32", parsed.NestedOffset
		gtEqual(t, "quant state JSON (golden offset)", st2.MarshalPython(), blob)
		wantState = st2

		// End to end, through cudaMeanF32.
		codes, nested, off := DoubleQuant(absmax)
		st.DoubleQuant, st.NestedBlocksize, st.NestedDType, st.NestedOffset = true, NestedBlocksize, "float32", off
		fields := []struct {
			name      string
			got, want []byte
		}{
			{"nested_offset", f32Bytes([]float32{off}), f32Bytes([]float32{parsed.NestedOffset})},
			{"absmax codes", codes, wantCodes},
			{"nested_absmax", f32Bytes(nested), wantNested},
			{"quant state JSON", st.MarshalPython(), blob},
		}
		for _, f := range fields {
			if bytes.Equal(f.got, f.want) {
				continue
			}
			if !pendingCUDAMeanCases[key] {
				gtEqual(t, f.name, f.got, f.want)
				continue
			}
			meanDiff = append(meanDiff, f.name)
		}
		if pendingCUDAMeanCases[key] {
			if len(meanDiff) == 0 {
				t.Errorf("%s matches bitsandbytes now: remove it from pendingCUDAMeanCases", key)
			} else if ulps := int64(math.Float32bits(off)) - int64(math.Float32bits(parsed.NestedOffset)); ulps != 1 && ulps != -1 {
				t.Errorf("nested_offset %v is %d ulps from bitsandbytes' %v", off, ulps, parsed.NestedOffset)
			}
		}
	}
	if !reflect.DeepEqual(parsed, wantState) {
		t.Errorf("ParseQuantState(golden) = %+v, want %+v", parsed, wantState)
	}

	// Dequantization of bitsandbytes' own output (recorded for B=64 only).
	deq, ok := g.tensors[c.name+".dequant"]
	if !ok {
		return describeMeanDiff(key, meanDiff)
	}
	am := absmax
	gam := g.get(t, w+".absmax")
	if c.dq {
		am = make([]float32, len(gam.data))
		UndoDoubleQuant(am, gam.data, gtFloats(t, g.get(t, w+".nested_absmax")), parsed.NestedOffset)
	} else {
		am = gtFloats(t, gam)
	}
	out := make([]float32, n)
	DequantizeBlocks(out, gw.data, am, c.bs, c.qt)
	gtEqual(t, "dequant", f32Bytes(roundTo(t, out, in.dt)), deq.data)
	return describeMeanDiff(key, meanDiff)
}

func describeMeanDiff(key string, fields []string) string {
	if len(fields) == 0 {
		return ""
	}
	return fmt.Sprintf("  %s: %s", key, strings.Join(fields, ", "))
}
