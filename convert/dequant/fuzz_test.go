package dequant

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert/internal/jobs"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// FuzzLoadWeight builds a checkpoint holding one packed weight whose
// quant-state JSON and tensor sizes come from the fuzzer, and reads it back
// completely: LoadWeight must reject every inconsistency with a
// *WeightError (never panic), and ReadBlocks + Dequantize must work on
// whatever it accepts. Seeds are the quant states of the golden models.
func FuzzLoadWeight(f *testing.F) {
	for _, m := range []string{"tiny-llama-bf16-nf4-dq-u8", "tiny-llama-bf16-nf4-u8", "tiny-llama-b-f32-fp4-u8-f16", "tiny-llama-bf16-nf4-dq-f32storage"} {
		ck, err := checkpoint.Open(model(m))
		if err != nil {
			f.Fatal(err)
		}
		ws, err := FindWeights(ck)
		if err != nil {
			f.Fatal(err)
		}
		w := ws[0]
		for _, c := range w.Companions {
			if strings.Contains(c, ".quant_state.") {
				t, _ := ck.Tensor(c)
				blob, _ := t.ReadAll()
				f.Add(blob, uint32(w.Packed.Size()), uint8(w.Packed.DType), uint32(w.NumBlocks()), w.State.DoubleQuant)
			}
		}
		ck.Close()
	}
	// Issue 14's broken weights: shapes of another rank, an oversized
	// packed weight, a non-finite offset.
	for _, shape := range []string{"[6144]", "[2, 32, 96]", "[64, 96]"} {
		f.Add([]byte(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": `+shape+`}`), uint32(3072), uint8(dtype.U8), uint32(96), false)
	}
	f.Add([]byte(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 96]}`), uint32(3072+64), uint8(dtype.U8), uint32(96), false)
	f.Add([]byte(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 96], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": NaN}`), uint32(3072), uint8(dtype.U8), uint32(96), true)
	f.Fuzz(func(t *testing.T, blob []byte, packedBytes uint32, packedDType uint8, nblocks uint32, dq bool) {
		packedBytes %= 1 << 16
		nblocks %= 1 << 12
		pd := dtype.DType(packedDType)
		if !pd.Valid() || pd.Size() == 0 {
			pd = dtype.U8
		}
		packedBytes -= packedBytes % uint32(pd.Size())
		const w = "m.weight"
		type tensor struct {
			name  string
			dt    dtype.DType
			shape []int64
		}
		ts := []tensor{
			{w, pd, []int64{int64(packedBytes) / int64(pd.Size()), 1}},
			{w + ".quant_map", dtype.F32, []int64{16}},
			{w + ".quant_state.bitsandbytes__nf4", dtype.U8, []int64{int64(len(blob))}},
		}
		if dq {
			ts = append(ts,
				tensor{w + ".absmax", dtype.U8, []int64{int64(nblocks)}},
				tensor{w + ".nested_absmax", dtype.F32, []int64{int64(nblocks+255) / 256}},
				tensor{w + ".nested_quant_map", dtype.F32, []int64{256}})
		} else {
			ts = append(ts, tensor{w + ".absmax", dtype.F32, []int64{int64(nblocks)}})
		}
		var specs []safetensors.TensorSpec
		for _, tn := range ts {
			specs = append(specs, safetensors.TensorSpec{Name: tn.name, DType: tn.dt, Shape: tn.shape})
		}
		plan, err := safetensors.NewPlan(nil, specs)
		if err != nil {
			t.Fatal(err)
		}
		file := slices.Clone(plan.Header)
		for _, ti := range plan.Tensors {
			if strings.Contains(ti.Name, "quant_state") {
				file = append(file, blob...)
				continue
			}
			data := make([]byte, ti.Size())
			for i := 0; i+4 <= len(data); i += 4 { // float32 1.0 / bytes 0x00,0x00,0x80,0x3f
				binary.LittleEndian.PutUint32(data[i:], 0x3f800000+uint32(i))
			}
			file = append(file, data...)
		}
		path := filepath.Join(t.TempDir(), "model.safetensors")
		if err := os.WriteFile(path, file, 0o666); err != nil {
			t.Fatal(err)
		}
		ck, err := checkpoint.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer ck.Close()
		ws, err := FindWeights(ck)
		if err != nil {
			if !errors.Is(err, ErrWeight) || !strings.HasPrefix(err.Error(), "dequant: ") {
				t.Fatalf("error %v is not a WeightError", err)
			}
			return
		}
		if len(ws) != 1 {
			t.Fatalf("%d weights", len(ws))
		}
		wt := ws[0]
		var b Blocks
		var vals []float32
		for first := int64(0); first < wt.NumBlocks(); first += 256 {
			if err := wt.ReadBlocks(&b, first, 256); err != nil {
				t.Fatal(err)
			}
			vals = jobs.Grow(vals, b.Elements)
			wt.Dequantize(vals, &b)
		}
	})
}
