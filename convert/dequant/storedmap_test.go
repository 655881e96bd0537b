package dequant

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// rewriteModel copies the single-file model src to a new directory with
// every tensor's bytes passed through patch (a 1-D U8 tensor may change
// length), and returns the directory.
func rewriteModel(t *testing.T, src string, patch func(name string, b []byte) []byte) string {
	t.Helper()
	ck, err := checkpoint.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	var specs []safetensors.TensorSpec
	data := map[string][]byte{}
	for _, tn := range ck.Tensors() {
		b, err := tn.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		b = patch(tn.Name, b)
		shape := tn.Shape
		if int64(len(b)) != tn.Size() {
			if tn.DType != dtype.U8 || len(shape) != 1 {
				t.Fatalf("patch changed the size of %s", tn.Name)
			}
			shape = []int64{int64(len(b))}
		}
		specs = append(specs, safetensors.TensorSpec{Name: tn.Name, DType: tn.DType, Shape: shape})
		data[tn.Name] = b
	}
	plan, err := safetensors.NewPlan(map[string]string{"format": "pt"}, specs)
	if err != nil {
		t.Fatal(err)
	}
	file := bytes.Clone(plan.Header)
	for _, ti := range plan.Tensors {
		file = append(file, data[ti.Name]...)
	}
	dir := filepath.Join(t.TempDir(), "model")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "model.safetensors"), file, 0o666); err != nil {
		t.Fatal(err)
	}
	if cfg, err := os.ReadFile(filepath.Join(src, "config.json")); err == nil {
		if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o666); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// ftz32 flushes a subnormal float32 to zero, as the GPU does.
func ftz32(v float32) float32 {
	if math.Abs(float64(v)) < 0x1p-126 {
		return float32(math.Copysign(0, float64(v)))
	}
	return v
}

// TestStoredNestedMap dequantizes a checkpoint whose nested_quant_map is
// not bitsandbytes' current dynamic map (code[0] = -1.0, as CPU builds of
// bitsandbytes 0.42-0.49 wrote it): bitsandbytes dequantizes the absmax
// codes with the stored map, so must Dequantize. The golden model never
// uses absmax code 0, so every 7th block's code is set to 0 in both the
// checkpoint with the standard map and the one with the old map. The
// expected weights are computed here from the stored tensors by the
// formula of spec §4.3: absmax = f32(map[code]·nested_absmax) + offset,
// then w = f32(code4·absmax) rounded to the weight's dtype.
func TestStoredNestedMap(t *testing.T) {
	golden := model("tiny-llama-bf16-nf4-dq-u8")
	patch := func(oldMap bool) func(string, []byte) []byte {
		return func(name string, b []byte) []byte {
			switch {
			case strings.HasSuffix(name, ".absmax"):
				b = bytes.Clone(b)
				for i := 0; i < len(b); i += 7 {
					b[i] = 0
				}
			case oldMap && strings.HasSuffix(name, ".nested_quant_map"):
				b = bytes.Clone(b)
				binary.LittleEndian.PutUint32(b, math.Float32bits(-1.0))
			}
			return b
		}
	}
	std := rewriteModel(t, golden, patch(false))
	old := rewriteModel(t, golden, patch(true))
	gotStd := tensorBytes(t, run(t, std, Options{Workers: 2}))
	gotOld := tensorBytes(t, run(t, old, Options{Workers: 2, JobElements: 1}))
	weights, differ := 0, 0
	for _, c := range []struct {
		src string
		got map[string][]byte
	}{{std, gotStd}, {old, gotOld}} {
		in := tensorBytes(t, c.src)
		for name, qs := range in {
			wname, ok := strings.CutSuffix(name, ".quant_state.bitsandbytes__nf4")
			if !ok {
				continue
			}
			weights++
			if want := expectedWeight(t, in, wname, qs); !bytes.Equal(c.got[wname], want) {
				t.Errorf("%s: %s is not dequantized with its stored nested_quant_map", c.src, wname)
			}
			if c.src == old && !bytes.Equal(gotOld[wname], gotStd[wname]) {
				differ++
			}
		}
	}
	if weights != 28 || differ == 0 {
		t.Errorf("%d weights checked (want 28), %d changed by the map (want some)", weights, differ)
	}
}

// expectedWeight dequantizes the double-quantized NF4 weight wname of the
// tensors in, whose quant-state JSON is qs, by the formula of spec §4.3.
func expectedWeight(t *testing.T, in map[string][]byte, wname string, qs []byte) []byte {
	t.Helper()
	st, err := bnb.ParseQuantState(qs)
	if err != nil {
		t.Fatal(err)
	}
	f32s := func(b []byte) []float32 {
		v := make([]float32, len(b)/4)
		cast.Decode(v, b, dtype.F32, dtype.F32)
		return v
	}
	codes, nested, nmap := in[wname+".absmax"], f32s(in[wname+".nested_absmax"]), f32s(in[wname+".nested_quant_map"])
	cb := bnb.CodeBook(bnb.NF4)
	packed := in[wname]
	n := int64(1)
	for _, s := range st.Shape {
		n *= s
	}
	vals := make([]float32, n)
	for i := range vals {
		blk := i / st.Blocksize
		absmax := ftz32(nmap[codes[blk]]*nested[blk/bnb.NestedBlocksize]) + st.NestedOffset
		q := packed[i/2] >> 4
		if i%2 == 1 {
			q = packed[i/2] & 15
		}
		vals[i] = ftz32(cb[q] * absmax)
	}
	d, _ := dtype.FromTorchName(st.DType)
	out := make([]byte, n*int64(d.Size()))
	cast.Encode(out, vals, d)
	return out
}

// TestUnsupportedQuantStateDType: a quant state whose dtype is not one
// bitsandbytes quantizes (float32, bfloat16, float16) is an error naming
// the weight, not an output of zeros.
func TestUnsupportedQuantStateDType(t *testing.T) {
	const victim = "model.layers.0.mlp.down_proj.weight"
	for _, d := range []string{"float64", "int8", "uint8"} {
		src := rewriteModel(t, model("tiny-llama-bf16-nf4-dq-u8"), func(name string, b []byte) []byte {
			if name == victim+".quant_state.bitsandbytes__nf4" {
				return bytes.Replace(b, []byte(`"dtype": "bfloat16"`), []byte(`"dtype": "`+d+`"`), 1)
			}
			return b
		})
		dst := filepath.Join(t.TempDir(), "out")
		_, err := Dequantize(context.Background(), src, dst, Options{})
		if err == nil || !errors.Is(err, ErrWeight) || !strings.Contains(err.Error(), victim) || !strings.Contains(err.Error(), `"`+d+`"`) {
			t.Errorf("dtype %s: error %v, want a WeightError naming %s and the dtype", d, err, victim)
		}
		if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("dtype %s: %s exists after the error", d, dst)
		}
	}
}
