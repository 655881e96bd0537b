package dequant

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert/internal/cast"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
)

const vectors = "../../testdata/golden/vectors.safetensors"

// TestGoldenVectors checks Weight.ReadBlocks + Dequantize, rounded to the
// quant state's dtype, against bitsandbytes' dequantize_4bit output (the
// "<case>.dequant" tensors, F32) for every blocksize-64 case: NF4 and FP4,
// with and without double quantization, f32/bf16/f16 inputs, odd sizes,
// exact ties and zero blocks.
func TestGoldenVectors(t *testing.T) {
	ck, err := checkpoint.Open(vectors)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	ws, err := FindWeights(ck)
	if err != nil {
		t.Fatal(err)
	}
	cases := 0
	for _, w := range ws {
		key := strings.TrimSuffix(w.Name, ".weight")
		want, ok := ck.Tensor(key + ".dequant")
		if !ok {
			if w.State.Blocksize == 64 {
				t.Errorf("%s: no golden .dequant", key)
			}
			continue
		}
		cases++
		raw, err := want.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if want.DType != dtype.F32 || want.NumElements() != w.NumElements() {
			t.Fatalf("%s: golden is %v %v, weight has %d elements", key, want.DType, want.Shape, w.NumElements())
		}
		// Read in runs of 256 blocks and in one go.
		for _, per := range []int64{256, w.NumBlocks()} {
			got := make([]float32, 0, w.NumElements())
			var b Blocks
			for first := int64(0); first < w.NumBlocks(); first += per {
				if err := w.ReadBlocks(&b, first, per); err != nil {
					t.Fatal(err)
				}
				vals := make([]float32, b.Elements)
				w.Dequantize(vals, &b)
				got = append(got, vals...)
			}
			bad := 0
			for i, v := range got {
				g := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
				if r := roundTrip(v, w.DType); math.Float32bits(r) != math.Float32bits(g) {
					if bad < 3 {
						t.Errorf("%s (runs of %d blocks): element %d = %v (%08x), bitsandbytes %v (%08x)", key, per, i, r, math.Float32bits(r), g, math.Float32bits(g))
					}
					bad++
				}
			}
			if bad > 0 {
				t.Errorf("%s: %d of %d elements differ", key, bad, len(got))
			}
		}
	}
	if cases != 28 {
		t.Errorf("%d golden cases, want 28", cases)
	}
}

// roundTrip rounds v to d and widens it back, as torch's .to(d).float().
func roundTrip(v float32, d dtype.DType) float32 {
	var b [4]byte
	cast.Encode(b[:], []float32{v}, d)
	out := make([]float32, 1)
	cast.Decode(out, b[:], d, d)
	return out[0]
}

// TestGoldenVectorsPipeline runs Dequantize on the golden vectors file
// (every block size, odd element counts, jobs cut at every group of 256
// blocks) and checks the output weights of the blocksize-64 cases against
// bitsandbytes' dequantize_4bit, rounded to the weight's dtype.
func TestGoldenVectorsPipeline(t *testing.T) {
	dst := t.TempDir() + "/out"
	if _, err := Dequantize(context.Background(), vectors, dst, Options{Workers: 3, JobElements: 100}); err != nil {
		t.Fatal(err)
	}
	out, err := checkpoint.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, err := checkpoint.Open(vectors)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	checked := 0
	for _, tn := range out.Tensors() {
		key, ok := strings.CutSuffix(tn.Name, ".weight")
		if !ok {
			continue
		}
		qs, _ := in.Tensor(tn.Name + ".quant_state.bitsandbytes__" + key[strings.Index(key, ".")+1:][:3])
		blob, err := qs.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		st, err := bnb.ParseQuantState(blob)
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := dtype.FromTorchName(st.DType); tn.DType != d || !slices.Equal(tn.Shape, st.Shape) {
			t.Errorf("%s: %v %v, want %s %v", tn.Name, tn.DType, tn.Shape, st.DType, st.Shape)
		}
		g, ok := in.Tensor(key + ".dequant")
		if !ok {
			continue
		}
		golden, _ := g.ReadAll()
		vals := make([]float32, g.NumElements())
		cast.Decode(vals, golden, dtype.F32, dtype.F32)
		want := make([]byte, len(vals)*tn.DType.Size())
		cast.Encode(want, vals, tn.DType)
		got, err := tn.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from bitsandbytes' dequantize_4bit", tn.Name)
		}
		checked++
	}
	if checked != 28 {
		t.Errorf("checked %d cases, want 28", checked)
	}
}
