package dequant_test

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/convert/dequant"
	"github.com/qconv/qconv/convert/verify"
	"github.com/qconv/qconv/formats/bnb"
)

const models = "../../testdata/golden/models"

func model(name string) string { return filepath.Join(models, name) }

func compare(t *testing.T, orig, quant string) *verify.Report {
	t.Helper()
	rep, err := verify.Compare(context.Background(), orig, quant, verify.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func text(r *verify.Report) string {
	var b bytes.Buffer
	r.WriteText(&b)
	return b.String()
}

// roundTrip checks a quantized checkpoint against its source with verify,
// dequantizes it, and checks the dense result against the source: the
// dense tensors must be identical, and every dequantized weight must
// differ from the source exactly as much as verify measured on the 4-bit
// checkpoint (the same SNR up to the final rounding to the weight's dtype).
// It returns verify's report on the 4-bit checkpoint.
func roundTrip(t *testing.T, src, quant string) (*verify.Report, string) {
	t.Helper()
	rq := compare(t, src, quant)
	if !rq.OK() {
		t.Fatalf("verify %s against %s failed:\n%s", quant, src, text(rq))
	}
	dense := filepath.Join(t.TempDir(), "dense")
	if _, err := dequant.Dequantize(context.Background(), quant, dense, dequant.Options{}); err != nil {
		t.Fatal(err)
	}
	rd := compare(t, src, dense)
	byName := map[string]*verify.TensorReport{}
	for _, tr := range rq.Tensors {
		byName[tr.Name] = tr
	}
	for _, tr := range rd.Tensors {
		q := byName[tr.Name]
		switch {
		case q == nil:
			t.Errorf("%s: in the dequantized checkpoint only", tr.Name)
		case q.Kind == verify.KindDense:
			if tr.Status != verify.StatusOK {
				t.Errorf("dense %s: %s %s", tr.Name, tr.Status, tr.Message)
			}
		case tr.Status != verify.StatusMismatch:
			t.Errorf("dequantized %s: status %s, want mismatch (the values are not the source's)", tr.Name, tr.Status)
		case math.Abs(float64(tr.SNR-q.SNR)) > 0.05:
			t.Errorf("dequantized %s: SNR %s dB, verify measured %s dB on the 4-bit weight", tr.Name, tr.SNR, q.SNR)
		}
	}
	if rd.Totals.Tensors != rq.Totals.Tensors {
		t.Errorf("dequantized checkpoint has %d tensors, the 4-bit one %d", rd.Totals.Tensors, rq.Totals.Tensors)
	}
	return rq, dense
}

// TestGoldenRoundTrip: golden 4-bit checkpoint -> verify -> dequant ->
// compare with the source.
func TestGoldenRoundTrip(t *testing.T) {
	for _, c := range []struct{ src, quant string }{
		{"tiny-llama-bf16", "tiny-llama-bf16-nf4-dq-u8"},
		{"tiny-llama-bf16", "tiny-llama-bf16-nf4-u8"},
		{"tiny-llama-bf16", "tiny-llama-bf16-fp4-dq-u8"},
		{"tiny-llama-bf16", "tiny-llama-bf16-nf4-dq-f32storage"},
		{"tiny-llama-f32", "tiny-llama-f32-fp4-dq-u8"},
		{"tiny-llama-b-f32", "tiny-llama-b-f32-fp4-u8-f16"},
		{"tiny-llama-b-f32", "tiny-llama-b-f32-nf4-dq-bf16storage"},
	} {
		t.Run(c.quant, func(t *testing.T) {
			rq, _ := roundTrip(t, model(c.src), model(c.quant))
			t.Logf("%s: SNR %s dB", c.quant, rq.Totals.SNR)
		})
	}
}

// TestConvertRoundTrip: source -> convert -> verify -> dequant -> compare
// with the source, for NF4 and FP4 with and without double quantization.
// Where transformers wrote the same conversion, the dequantized output
// must be byte-identical to the dequantized golden checkpoint.
func TestConvertRoundTrip(t *testing.T) {
	src := model("tiny-llama-bf16")
	for _, qt := range []bnb.QuantType{bnb.NF4, bnb.FP4} {
		for _, dq := range []bool{true, false} {
			name := fmt.Sprintf("%s-dq%v", qt, dq)
			t.Run(name, func(t *testing.T) {
				quant := filepath.Join(t.TempDir(), "q")
				if _, err := convert.Convert(context.Background(), src, quant, convert.Options{QuantType: qt, NoDoubleQuant: !dq}); err != nil {
					t.Fatal(err)
				}
				rq, dense := roundTrip(t, src, quant)
				t.Logf("tiny-llama-bf16 %s: verify SNR %s dB, max |err| %.4g", name, rq.Totals.SNR, rq.Totals.MaxAbsError)
				golden := map[string]string{"nf4-dqtrue": "tiny-llama-bf16-nf4-dq-u8", "nf4-dqfalse": "tiny-llama-bf16-nf4-u8", "fp4-dqtrue": "tiny-llama-bf16-fp4-dq-u8"}[name]
				if golden == "" {
					return
				}
				want := filepath.Join(t.TempDir(), "want")
				if _, err := dequant.Dequantize(context.Background(), model(golden), want, dequant.Options{}); err != nil {
					t.Fatal(err)
				}
				for _, f := range []string{"model.safetensors", "config.json"} {
					a, _ := os.ReadFile(filepath.Join(dense, f))
					b, _ := os.ReadFile(filepath.Join(want, f))
					if len(a) == 0 || !bytes.Equal(a, b) {
						t.Errorf("%s of dequant(convert) differs from dequant(%s)", f, golden)
					}
				}
			})
		}
	}
}
