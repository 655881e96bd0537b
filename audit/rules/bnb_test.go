package rules

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

// qspec describes a packed 4-bit weight for a fixture. Zero fields take
// transformers' defaults: nf4, double quant off, U8 storage, blocksize 64,
// dtype "bfloat16".
type qspec struct {
	base      string
	shape     []int64
	qt        bnb.QuantType
	dq        bool
	storage   dtype.DType
	blocksize int
	dtype     string
}

func f32bytes(vals []float32) []byte {
	b := make([]byte, 0, 4*len(vals))
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// quantTensors returns the tensors bitsandbytes saves for q: consistent
// with each other, with zero packed codes and absmax 1.
func quantTensors(q qspec) []tensorFix {
	if q.qt == 0 {
		q.qt = bnb.NF4
	}
	if q.storage == dtype.Invalid {
		q.storage = dtype.U8
	}
	if q.blocksize == 0 {
		q.blocksize = 64
	}
	if q.dtype == "" {
		q.dtype = "bfloat16"
	}
	n, _ := numel(q.shape)
	nbytes := bnb.PackedBytes(n)
	nb := bnb.NumBlocks(n, q.blocksize)
	state := bnb.QuantState{QuantType: q.qt, Blocksize: q.blocksize, DType: q.dtype, Shape: q.shape}
	book := bnb.CodeBook(q.qt)
	ts := []tensorFix{
		{Name: q.base, DType: q.storage, Shape: []int64{nbytes / int64(q.storage.Size()), 1}},
		{Name: q.base + ".quant_map", DType: dtype.F32, Shape: []int64{16}, Data: f32bytes(book[:])},
	}
	if q.dq {
		state.DoubleQuant, state.NestedBlocksize, state.NestedDType, state.NestedOffset = true, 256, "float32", 0.5
		dm := bnb.DynamicMap()
		ts = append(ts,
			tensorFix{Name: q.base + ".absmax", DType: dtype.U8, Shape: []int64{nb}},
			tensorFix{Name: q.base + ".nested_absmax", DType: dtype.F32, Shape: []int64{bnb.NumBlocks(nb, 256)}},
			tensorFix{Name: q.base + ".nested_quant_map", DType: dtype.F32, Shape: []int64{256}, Data: f32bytes(dm[:])},
		)
	} else {
		ones := make([]float32, nb)
		for i := range ones {
			ones[i] = 1
		}
		ts = append(ts, tensorFix{Name: q.base + ".absmax", DType: dtype.F32, Shape: []int64{nb}, Data: f32bytes(ones)})
	}
	js := state.MarshalPython()
	return append(ts, tensorFix{Name: q.base + ".quant_state.bitsandbytes__" + q.qt.String(), DType: dtype.U8, Shape: []int64{int64(len(js))}, Data: js})
}

const qw = "model.layers.0.mlp.down_proj.weight"

// std is a normal double-quantized NF4 weight with 2*64*... elements.
var std = qspec{base: qw, shape: []int64{64, 96}, dq: true}

func with(q qspec, f func(*qspec)) qspec { f(&q); return q }

// norm is a dense tensor that every quantized fixture also holds.
var norm = tensorFix{Name: "model.norm.weight", DType: dtype.BF16, Shape: []int64{64}, Data: bf16Ones(64)}

// bf16Ones returns n bfloat16 ones, the value a fresh norm weight holds.
func bf16Ones(n int) []byte {
	b := make([]byte, 0, 2*n)
	for range n {
		b = append(b, 0x80, 0x3f)
	}
	return b
}

// quantFile returns a build function writing one file holding the
// weights of qs (after edit, if not nil) and a dense norm weight.
func quantFile(edit func([]tensorFix) []tensorFix, qs ...qspec) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		ts := []tensorFix{norm}
		for _, q := range qs {
			ts = append(ts, quantTensors(q)...)
		}
		if edit != nil {
			ts = edit(ts)
		}
		p := filepath.Join(dir, "model.safetensors")
		writeST(t, p, pt, ts)
		return p
	}
}

// drop removes the named tensors.
func drop(names ...string) func([]tensorFix) []tensorFix {
	return func(ts []tensorFix) []tensorFix {
		return slices.DeleteFunc(ts, func(x tensorFix) bool { return slices.Contains(names, x.Name) })
	}
}

// set replaces the named tensor (keeping its name) by x.
func set(name string, x tensorFix) func([]tensorFix) []tensorFix {
	return func(ts []tensorFix) []tensorFix {
		out := slices.Clone(ts)
		for i := range out {
			if out[i].Name == name {
				x.Name = name
				out[i] = x
			}
		}
		return out
	}
}

// add appends tensors.
func add(xs ...tensorFix) func([]tensorFix) []tensorFix {
	return func(ts []tensorFix) []tensorFix { return append(slices.Clone(ts), xs...) }
}

func stateBlob(name, js string) tensorFix {
	return tensorFix{Name: name, DType: dtype.U8, Shape: []int64{int64(len(js))}, Data: []byte(js)}
}

const (
	stateNF4 = qw + ".quant_state.bitsandbytes__nf4"
	stateFP4 = qw + ".quant_state.bitsandbytes__fp4"
)

var bnbCases = []ruleCase{
	{rule: "BNB001", name: "f32-storage", want: []string{"BNB001 " + qw},
		build: quantFile(nil, with(std, func(q *qspec) { q.storage = dtype.F32 }))},
	{rule: "BNB001", name: "u8-storage", lookalike: true, build: quantFile(nil, std)},
	{rule: "BNB001", name: "f32-dense-weight-beside", lookalike: true,
		build: quantFile(add(tensorFix{Name: "lm_head.weight", DType: dtype.F32, Shape: []int64{8, 1}}), std)},
	{rule: "BNB002", name: "bf16-storage", want: []string{"BNB002 " + qw},
		build: quantFile(nil, with(std, func(q *qspec) { q.storage = dtype.BF16 }))},
	{rule: "BNB002", name: "f16-storage-fp4", want: []string{"BNB002 " + qw},
		build: quantFile(nil, with(std, func(q *qspec) { q.storage = dtype.F16; q.qt = bnb.FP4; q.dq = false }))},
	{rule: "BNB002", name: "bf16-dense", lookalike: true, build: quantFile(nil, std)},
	{rule: "BNB003", name: "two-states", want: []string{"BNB003 " + qw},
		build: quantFile(add(stateBlob(stateFP4, string(bnb.QuantState{QuantType: bnb.FP4, Blocksize: 64, DType: "bfloat16", Shape: []int64{64, 96}, DoubleQuant: true, NestedBlocksize: 256, NestedDType: "float32", NestedOffset: 0.5}.MarshalPython()))), std)},
	{rule: "BNB003", name: "no-state", want: []string{"BNB003 " + qw}, build: quantFile(drop(stateNF4), std)},
	{rule: "BNB003", name: "two-weights", lookalike: true,
		build: quantFile(nil, std, with(std, func(q *qspec) { q.base = "model.layers.0.mlp.up_proj.weight" }))},
	{rule: "BNB004", name: "not-json", want: []string{"BNB004 " + stateNF4}, build: quantFile(set(stateNF4, stateBlob("", `{"quant_type": "nf4", `)), std)},
	{rule: "BNB004", name: "unknown-key", want: []string{"BNB004 " + stateNF4},
		build: quantFile(set(stateNF4, stateBlob("", `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 96], "scale": 2}`)), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB004", name: "i8-blob", want: []string{"BNB004 " + stateNF4},
		build: quantFile(func(ts []tensorFix) []tensorFix {
			for i := range ts {
				if ts[i].Name == stateNF4 {
					ts[i].DType = dtype.I8
				}
			}
			return ts
		}, std)},
	{rule: "BNB004", name: "reordered-keys", lookalike: true,
		build: quantFile(set(stateNF4, stateBlob("", `{"shape":[64,96],"dtype":"bfloat16","blocksize":64,"quant_type":"nf4"}`)), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB005", name: "fp4-json-under-nf4-key", want: []string{"BNB005 " + stateNF4},
		build: quantFile(set(stateNF4, stateBlob("", `{"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 96]}`)), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB005", name: "int4-key", want: []string{"BNB005 " + qw + ".quant_state.bitsandbytes__int4"},
		build: quantFile(func(ts []tensorFix) []tensorFix {
			for i := range ts {
				if ts[i].Name == stateNF4 {
					ts[i].Name = qw + ".quant_state.bitsandbytes__int4"
				}
			}
			return ts
		}, std)},
	{rule: "BNB005", name: "fp4", lookalike: true, build: quantFile(nil, with(std, func(q *qspec) { q.qt = bnb.FP4 }))},
	{rule: "BNB006", name: "short-packed", want: []string{"BNB006 " + qw},
		build: quantFile(set(qw, tensorFix{DType: dtype.U8, Shape: []int64{3071, 1}}), std)},
	{rule: "BNB006", name: "odd-count", lookalike: true, build: quantFile(nil, with(std, func(q *qspec) { q.shape = []int64{33, 7} }))},
	{rule: "BNB007", name: "f32-absmax-with-dq", want: []string{"BNB007 " + qw + ".absmax"},
		build: quantFile(set(qw+".absmax", tensorFix{DType: dtype.F32, Shape: []int64{96}}), std)},
	{rule: "BNB007", name: "absmax-count", want: []string{"BNB007 " + qw + ".absmax"},
		build: quantFile(set(qw+".absmax", tensorFix{DType: dtype.F32, Shape: []int64{95}}), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB007", name: "no-absmax", want: []string{"BNB007 " + qw}, build: quantFile(drop(qw+".absmax"), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB007", name: "blocksize-128-partial", lookalike: true,
		build: quantFile(nil, with(std, func(q *qspec) { q.blocksize = 128; q.shape = []int64{1000} }))},
	{rule: "BNB008", name: "nf4-map-on-fp4", want: []string{"BNB008 " + qw + ".quant_map"},
		build: quantFile(set(qw+".quant_map", tensorFix{DType: dtype.F32, Shape: []int64{16}, Data: f32bytes(func() []float32 { b := bnb.CodeBook(bnb.NF4); return b[:] }())}),
			with(std, func(q *qspec) { q.qt = bnb.FP4 }))},
	{rule: "BNB008", name: "no-quant-map", want: []string{"BNB008 " + qw}, build: quantFile(drop(qw+".quant_map"), std)},
	{rule: "BNB008", name: "f16-quant-map", want: []string{"BNB008 " + qw + ".quant_map"},
		build: quantFile(set(qw+".quant_map", tensorFix{DType: dtype.F16, Shape: []int64{16}}), std)},
	{rule: "BNB008", name: "fp4-negative-zero", lookalike: true,
		build: quantFile(func(ts []tensorFix) []tensorFix {
			// -0.0 at code 8 equals the canonical +0.0 in value.
			for i := range ts {
				if ts[i].Name == qw+".quant_map" {
					b := bnb.CodeBook(bnb.FP4)
					b[8] = float32(math.Copysign(0, -1))
					ts[i].Data = f32bytes(b[:])
				}
			}
			return ts
		}, with(std, func(q *qspec) { q.qt = bnb.FP4 }))},
	{rule: "BNB009", name: "no-nested-absmax", want: []string{"BNB009 " + qw}, build: quantFile(drop(qw+".nested_absmax"), std)},
	{rule: "BNB009", name: "stray-nested", want: []string{"BNB009 " + qw + ".nested_quant_map"},
		build: quantFile(add(tensorFix{Name: qw + ".nested_quant_map", DType: dtype.F32, Shape: []int64{256}, Data: f32bytes(func() []float32 { m := bnb.DynamicMap(); return m[:] }())}),
			with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB009", name: "nested-absmax-count", want: []string{"BNB009 " + qw + ".nested_absmax"},
		build: quantFile(set(qw+".nested_absmax", tensorFix{DType: dtype.F32, Shape: []int64{2}}), std)},
	{rule: "BNB009", name: "257-blocks", lookalike: true,
		build: quantFile(nil, with(std, func(q *qspec) { q.shape = []int64{257 * 64} }))},
	{rule: "BNB010", name: "cpu-minus-one", want: []string{"BNB010 " + qw + ".nested_quant_map"},
		build: quantFile(func(ts []tensorFix) []tensorFix {
			for i := range ts {
				if ts[i].Name == qw+".nested_quant_map" {
					m := bnb.DynamicMap()
					m[0] = -1
					ts[i].Data = f32bytes(m[:])
				}
			}
			return ts
		}, std)},
	{rule: "BNB010", name: "standard-map", lookalike: true, build: quantFile(nil, std)},
	{rule: "BNB011", name: "blocksize-48", want: []string{"BNB011 " + stateNF4},
		build: quantFile(set(stateNF4, stateBlob("", `{"quant_type": "nf4", "blocksize": 48, "dtype": "bfloat16", "shape": [64, 96]}`)), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB011", name: "nested-128", want: []string{"BNB011 " + stateNF4},
		build: quantFile(set(stateNF4, stateBlob("", `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 96], "nested_blocksize": 128, "nested_dtype": "float32", "nested_offset": 0.5}`)), std)},
	{rule: "BNB011", name: "blocksize-32", lookalike: true, build: quantFile(nil, with(std, func(q *qspec) { q.blocksize = 32 }))},
	{rule: "BNB012", name: "orphans", want: []string{"BNB012 " + qw}, build: quantFile(drop(qw), std)},
	{rule: "BNB013", name: "nan-absmax", want: []string{"BNB013 " + qw + ".absmax"},
		build: quantFile(set(qw+".absmax", tensorFix{DType: dtype.F32, Shape: []int64{96}, Data: f32bytes(append(make([]float32, 95), float32(math.NaN())))}), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB013", name: "negated-nested-absmax", want: []string{"BNB013 " + qw + ".nested_absmax"},
		build: quantFile(set(qw+".nested_absmax", tensorFix{DType: dtype.F32, Shape: []int64{1}, Data: f32bytes([]float32{-0.25})}), std)},
	{rule: "BNB013", name: "zero-stats", lookalike: true,
		build: quantFile(set(qw+".absmax", tensorFix{DType: dtype.F32, Shape: []int64{96}}), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB004", name: "3d-shape-in-model", want: []string{"BNB004 " + stateNF4},
		build: inModel(quantFile(set(stateNF4, stateBlob("", `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [2, 32, 96], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5}`)), std))},
	{rule: "BNB004", name: "1d-shape-in-model", want: []string{"BNB004 " + stateNF4},
		build: inModel(quantFile(set(stateNF4, stateBlob("", `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [6144], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5}`)), std))},
	{rule: "BNB004", name: "1d-shape-bare-file", lookalike: true,
		build: quantFile(set(stateNF4, stateBlob("", `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [6144]}`)), with(std, func(q *qspec) { q.dq = false }))},
	{rule: "BNB012", name: "dense-absmax-name", lookalike: true,
		build: file(pt, tensorFix{Name: "model.router.absmax_scale", DType: dtype.F32, Shape: []int64{4}})},
}

func TestBNBRules(t *testing.T) {
	runCases(t, bnbCases)
	checkCoverage(t, bnbCases, "BNB")
}

// inModel turns a one-file fixture into a model directory: the file as
// model.safetensors beside the golden NF4 model's config.json.
func inModel(build func(t *testing.T, dir string) string) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		build(t, dir)
		cfg, err := os.ReadFile(filepath.Join("..", "..", "testdata", "golden", "models", "tiny-llama-bf16-nf4-dq-u8", "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, "config.json"), cfg)
		return dir
	}
}
