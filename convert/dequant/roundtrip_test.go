package dequant_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert"
	"github.com/qconv/qconv/convert/dequant"
	"github.com/qconv/qconv/convert/verify"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
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
		case math.Abs(float64(tr.SNR-q.SNR)) > snrSlack(tr.Elements):
			t.Errorf("dequantized %s: SNR %s dB, verify measured %s dB on the 4-bit weight", tr.Name, tr.SNR, q.SNR)
		}
	}
	if rd.Totals.Tensors != rq.Totals.Tensors {
		t.Errorf("dequantized checkpoint has %d tensors, the 4-bit one %d", rd.Totals.Tensors, rq.Totals.Tensors)
	}
	return rq, dense
}

// snrSlack is how far (dB) the SNR of a dequantized weight may be from
// verify's on the 4-bit weight: the final rounding to the weight's dtype
// moves it by a few hundredths of a dB, more on tiny tensors (such as
// Qwen2-MoE's 64-element shared_expert_gate).
func snrSlack(elements int64) float64 {
	if elements < 1024 {
		return 0.15
	}
	return 0.05
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

const archRefs = "../../testdata/arch"

// TestArchReferencesRoundTrip: for every reference family that
// transformers quantized (testdata/arch/*/out, written by transformers and
// bitsandbytes), verify passes against the bf16 source and dequant gives
// the source's tensors back, in the source's shapes (GPT-2's Conv1D
// weights, quantized transposed, included): the dequantized
// model.safetensors has the source's header byte for byte.
func TestArchReferencesRoundTrip(t *testing.T) {
	outs, _ := filepath.Glob(filepath.Join(archRefs, "*", "out"))
	if len(outs) < 40 {
		t.Fatalf("%d reference families, want at least 40", len(outs))
	}
	for _, out := range outs {
		family := filepath.Base(filepath.Dir(out))
		src := filepath.Join(filepath.Dir(out), "src")
		t.Run(family, func(t *testing.T) {
			if family == "falcon--FalconForCausalLM" {
				_, err := dequant.Dequantize(context.Background(), out, filepath.Join(t.TempDir(), "d"), dequant.Options{})
				if err == nil || !strings.Contains(err.Error(), "FalconForCausalLM") {
					t.Fatalf("dequant of Falcon: %v, want a refusal naming the architecture", err)
				}
				if _, err := verify.Compare(context.Background(), src, out, verify.Options{}); err == nil || !strings.Contains(err.Error(), "quantizes no layer") {
					t.Fatalf("verify of Falcon: %v, want a refusal saying why", err)
				}
				return
			}
			rq, dense := roundTrip(t, src, out)
			if rq.Totals.Quantized == 0 || rq.Totals.SNR < 15 {
				t.Errorf("%d quantized weights, SNR %s dB", rq.Totals.Quantized, rq.Totals.SNR)
			}
			// The names and shapes of the source, in its order; and where
			// the dtypes agree (not where transformers keeps a tensor in
			// float32, as DeepSeek's e_score_correction_bias) the header
			// byte for byte.
			got, want := shapes(t, dense), shapes(t, src)
			if !slices.Equal(got, want) {
				t.Errorf("dequantized tensors and shapes differ from the source's:\n%q\n%q", got, want)
			}
			if a, b := header(t, filepath.Join(dense, "model.safetensors")), header(t, filepath.Join(src, "model.safetensors")); !bytes.Equal(a, b) && !strings.Contains(string(a), `"F32"`) {
				t.Errorf("dequantized header differs from the source's:\n%s\n%s", a, b)
			}
		})
	}
}

// shapes returns "name [shape]" for every tensor of the checkpoint at
// path, sorted by name.
func shapes(t *testing.T, path string) []string {
	t.Helper()
	ck, err := checkpoint.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	var out []string
	for _, tn := range ck.Tensors() {
		out = append(out, fmt.Sprintf("%s %v", tn.Name, tn.Shape))
	}
	slices.Sort(out)
	return out
}

// header returns the JSON header of a safetensors file (for a test).
func header(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 8 {
		t.Fatalf("%s: %v", path, err)
	}
	n := int(binary.LittleEndian.Uint64(b))
	if 8+n > len(b) {
		t.Fatalf("%s: header length %d", path, n)
	}
	return b[8 : 8+n]
}

// TestConv1DManyJobs: GPT-2 converted by qconv with blocksize 32, so that
// every Conv1D weight spans several jobs of dequant and verify (one group
// of 256 blocks each, pieces that start and end inside rows): verify
// passes, and dequant writes the weights back in the source's shapes with
// the same error verify measured.
func TestConv1DManyJobs(t *testing.T) {
	src := filepath.Join(archRefs, "gpt2--GPT2LMHeadModel", "src")
	quant := filepath.Join(t.TempDir(), "q")
	if _, err := convert.Convert(context.Background(), src, quant, convert.Options{Blocksize: 32}); err != nil {
		t.Fatal(err)
	}
	for _, workers := range []int{1, 3} {
		rq, err := verify.Compare(context.Background(), src, quant, verify.Options{Workers: workers, JobElements: 1})
		if err != nil {
			t.Fatal(err)
		}
		transposed := 0
		for _, tr := range rq.Tensors {
			if tr.Transposed {
				transposed++
			}
		}
		if !rq.OK() || transposed != 8 {
			t.Fatalf("verify -j %d: %d transposed weights, want 8:\n%s", workers, transposed, text(rq))
		}
		dense := filepath.Join(t.TempDir(), "dense")
		if _, err := dequant.Dequantize(context.Background(), quant, dense, dequant.Options{Workers: workers, JobElements: 1}); err != nil {
			t.Fatal(err)
		}
		if got, want := header(t, filepath.Join(dense, "model.safetensors")), header(t, filepath.Join(src, "model.safetensors")); !bytes.Equal(got, want) {
			t.Errorf("-j %d: dequantized header differs from the source's", workers)
		}
		rd := compare(t, src, dense)
		for _, tr := range rd.Tensors {
			for _, q := range rq.Tensors {
				if q.Name == tr.Name && q.Transposed && math.Abs(float64(tr.SNR-q.SNR)) > 0.05 {
					t.Errorf("-j %d: dequantized %s: SNR %s dB, verify measured %s dB on the 4-bit weight", workers, tr.Name, tr.SNR, q.SNR)
				}
			}
		}
	}
}

// Without a config.json nothing says which weights are Conv1D: verify
// fails them, and says what is missing.
func TestConv1DWithoutConfig(t *testing.T) {
	ref := filepath.Join(archRefs, "gpt2--GPT2LMHeadModel")
	var dirs [2]string
	for i, side := range []string{"src", "out"} {
		dirs[i] = filepath.Join(t.TempDir(), side)
		b, err := os.ReadFile(filepath.Join(ref, side, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dirs[i], 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirs[i], "model.safetensors"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rep := compare(t, dirs[0], dirs[1])
	if rep.OK() {
		t.Fatal("verify passed GPT-2 without knowing its Conv1D weights")
	}
	for _, tr := range rep.Tensors {
		if tr.Name == "transformer.h.0.attn.c_attn.weight" && (tr.Status != verify.StatusInvalid || !strings.Contains(tr.Message, "Conv1D")) {
			t.Errorf("%s: %s %q, want invalid, naming Conv1D", tr.Name, tr.Status, tr.Message)
		}
	}
}

// A vision-language model's config.json has "dtype" in its sub-configs
// too (transformers writes them: formats/arch's SubconfigDType); dequant
// --dtype sets them with the top-level one.
func TestSubconfigDType(t *testing.T) {
	out := filepath.Join(archRefs, "qwen2_vl--Qwen2VLForConditionalGeneration", "out")
	for _, c := range []struct {
		opt  dequant.Options
		want string
	}{{dequant.Options{}, "bfloat16"}, {dequant.Options{DType: dtype.F32}, "float32"}} {
		dst := filepath.Join(t.TempDir(), "d")
		if _, err := dequant.Dequantize(context.Background(), out, dst, c.opt); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dst, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			DType  string                 `json:"dtype"`
			Text   struct{ DType string } `json:"text_config"`
			Vision struct{ DType string } `json:"vision_config"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.DType != c.want || cfg.Text.DType != c.want || cfg.Vision.DType != c.want {
			t.Errorf("--dtype %v: dtype %q, text_config %q, vision_config %q; want %q in all", c.opt.DType, cfg.DType, cfg.Text.DType, cfg.Vision.DType, c.want)
		}
	}
}
