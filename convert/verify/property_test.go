package verify

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// writeFile writes tensors (name -> dtype, shape, bytes) as a safetensors
// file.
func writeFile(t rapid.TB, path string, specs []safetensors.TensorSpec, data map[string][]byte) {
	plan, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	out := slices.Clone(plan.Header)
	for _, ti := range plan.Tensors {
		out = append(out, data[ti.Name]...)
	}
	if err := os.WriteFile(path, out, 0o666); err != nil {
		t.Fatal(err)
	}
}

// TestQuantizedIsWithinBounds is a property test of soundness: whatever
// the weights (scales from 1e-6 to 1e4, heavy tails, zero blocks, partial
// last blocks), dtype, block size, quant type and double quantization,
// bitsandbytes' quantization (the bnb package's CUDA emulation) passes.
func TestQuantizedIsWithinBounds(t *testing.T) {
	dir := t.TempDir()
	rapid.Check(t, func(t *rapid.T) {
		qt := rapid.SampledFrom([]bnb.QuantType{bnb.NF4, bnb.FP4}).Draw(t, "quant")
		bs := rapid.SampledFrom([]int{32, 64, 128, 256, 4096}).Draw(t, "blocksize")
		dq := rapid.Bool().Draw(t, "dq")
		dt := rapid.SampledFrom([]dtype.DType{dtype.F32, dtype.BF16, dtype.F16}).Draw(t, "dtype")
		rows := rapid.IntRange(1, 300).Draw(t, "rows")
		cols := rapid.IntRange(1, 97).Draw(t, "cols")
		scale := math.Pow(10, rapid.Float64Range(-6, 4).Draw(t, "log10 scale"))
		if dt == dtype.F16 {
			scale = min(scale, 1000)
		}
		seed := rapid.Uint64().Draw(t, "seed")
		zeroEvery := rapid.IntRange(0, 5).Draw(t, "zero blocks every")

		n := rows * cols
		x := make([]float32, n)
		s := seed | 1
		for i := range x {
			s ^= s << 13
			s ^= s >> 7
			s ^= s << 17
			u := float64(s>>11)/(1<<53)*2 - 1
			v := u * scale
			if s%97 == 0 {
				v *= 30 // outliers
			}
			if zeroEvery > 0 && (i/bs)%(zeroEvery+1) == zeroEvery {
				v = 0
			}
			x[i] = float32(v)
		}
		// The original in its dtype, and the values bitsandbytes sees.
		raw := make([]byte, n*dt.Size())
		cast.Encode(raw, x, dt)
		cast.Decode(x, raw, dt, dt)

		packed := make([]byte, bnb.PackedBytes(int64(n)))
		absmax := make([]float32, bnb.NumBlocks(int64(n), bs))
		bnb.QuantizeBlocks(packed, absmax, x, bs, qt)
		st := bnb.QuantState{QuantType: qt, Blocksize: bs, DType: dt.TorchName(), Shape: []int64{int64(rows), int64(cols)}}
		cb := bnb.CodeBook(qt)
		const w = "m.weight"
		data := map[string][]byte{w: packed, w + ".quant_map": cast.F32Bytes(cb[:])}
		specs := []safetensors.TensorSpec{
			{Name: w, DType: dtype.U8, Shape: []int64{int64(len(packed)), 1}},
			{Name: w + ".quant_map", DType: dtype.F32, Shape: []int64{16}},
		}
		if dq {
			codes, nested, offset := bnb.DoubleQuant(absmax)
			st.DoubleQuant, st.NestedBlocksize, st.NestedDType, st.NestedOffset = true, bnb.NestedBlocksize, "float32", offset
			dm := bnb.DynamicMap()
			data[w+".absmax"], data[w+".nested_absmax"], data[w+".nested_quant_map"] = codes, cast.F32Bytes(nested), cast.F32Bytes(dm[:])
			specs = append(specs,
				safetensors.TensorSpec{Name: w + ".absmax", DType: dtype.U8, Shape: []int64{int64(len(codes))}},
				safetensors.TensorSpec{Name: w + ".nested_absmax", DType: dtype.F32, Shape: []int64{int64(len(nested))}},
				safetensors.TensorSpec{Name: w + ".nested_quant_map", DType: dtype.F32, Shape: []int64{256}})
		} else {
			data[w+".absmax"] = cast.F32Bytes(absmax)
			specs = append(specs, safetensors.TensorSpec{Name: w + ".absmax", DType: dtype.F32, Shape: []int64{int64(len(absmax))}})
		}
		js := st.MarshalPython()
		key := w + "." + bnb.QuantStateSuffix(qt)
		data[key] = js
		specs = append(specs, safetensors.TensorSpec{Name: key, DType: dtype.U8, Shape: []int64{int64(len(js))}})
		quant := filepath.Join(dir, "quant.safetensors")
		writeFile(t, quant, specs, data)
		orig := filepath.Join(dir, "orig.safetensors")
		writeFile(t, orig, []safetensors.TensorSpec{{Name: w, DType: dt, Shape: st.Shape}}, map[string][]byte{w: raw})

		rep, err := Compare(context.Background(), orig, quant, Options{Workers: 2})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			tr := rep.Tensors[0]
			t.Fatalf("%s: %s (bound ratio %.6f)", tr.Status, tr.Message, tr.BoundRatio)
		}
	})
}
