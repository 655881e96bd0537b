package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/safetensors"
)

const archRefs = "../../testdata/arch"

// quantStates counts the 4-bit weights of a checkpoint transformers wrote.
func quantStates(t *testing.T, path string) int {
	t.Helper()
	r, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n := 0
	for _, ti := range r.Tensors() {
		if strings.Contains(ti.Name, ".quant_state.") {
			n++
		}
	}
	return n
}

func TestConvertDryRun(t *testing.T) {
	mix := filepath.Join(archRefs, "mixtral--MixtralForCausalLM")
	code, out, errOut := qconv("convert", "--dry-run", filepath.Join(mix, "src"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"MixtralForCausalLM (model_type mixtral)", "block_sparse_moe.experts.3.w2.weight [64, 128] bf16 -> keep bf16 (expert)",
		"block_sparse_moe.gate.weight [4, 64] bf16 -> keep bf16 (router)", "self_attn.q_proj.weight [64, 64] bf16 -> nf4 (linear)", "bits per weight"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(mix, "src", ".qconv-partial")); err == nil {
		t.Error("dry run wrote a work directory")
	}

	// --json: the quantized count is transformers' own, and the totals add up.
	code, out, errOut = qconv("convert", "--dry-run", "--json", filepath.Join(mix, "src"), "--skip", "nothing.matches*")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var d dryRun
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatal(err)
	}
	if want := quantStates(t, filepath.Join(mix, "out", "model.safetensors")); d.TensorsQuantized != want || !d.KnownArchitecture {
		t.Errorf("quantized %d (known %v), transformers quantized %d", d.TensorsQuantized, d.KnownArchitecture, want)
	}
	var sum int64
	for _, ten := range d.Tensors {
		sum += ten.OutBytes
	}
	if sum != d.OutputBytes || len(d.Tensors) != d.TensorsQuantized+d.TensorsKept || d.BitsPerWeight <= 4 || d.BitsPerWeight >= 16 {
		t.Errorf("totals: %+v", d)
	}
	if len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], `--skip "nothing.matches*" matches no tensor`) {
		t.Errorf("warnings %q", d.Warnings)
	}

	// GPT-2's Conv1D weights are quantized transposed.
	code, out, _ = qconv("convert", "--dry-run", filepath.Join(archRefs, "gpt2--GPT2LMHeadModel", "src"))
	if code != 0 || !strings.Contains(out, "attn.c_attn.weight [64, 192] bf16 -> nf4 transposed (conv1d)") {
		t.Errorf("gpt2 (exit %d):\n%s", code, out)
	}
	// Falcon: transformers quantizes nothing; refused, exit 2.
	code, _, errOut = qconv("convert", "--dry-run", filepath.Join(archRefs, "falcon--FalconForCausalLM", "src"))
	if code != 2 || !strings.Contains(errOut, "FalconForCausalLM") || !strings.Contains(errOut, "quantizes no layer") {
		t.Errorf("falcon: exit %d: %s", code, errOut)
	}
}

// An architecture the table does not know: name rules, and a warning on
// stderr and in --json.
func TestConvertUnknownArchitecture(t *testing.T) {
	src := t.TempDir()
	b, err := os.ReadFile(filepath.Join(archRefs, "llama--LlamaForCausalLM", "src", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "model.safetensors"), b, 0o666)
	os.WriteFile(filepath.Join(src, "config.json"), []byte(`{"architectures": ["BrandNewForCausalLM"], "model_type": "brand_new", "dtype": "bfloat16"}`), 0o666)
	code, out, errOut := qconv("convert", "--dry-run", "--json", src)
	var d dryRun
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d.KnownArchitecture || len(d.Warnings) != 1 || !strings.Contains(d.Warnings[0], "BrandNewForCausalLM") {
		t.Fatalf("exit %d, %+v, %s", code, d.Warnings, errOut)
	}
	dst := filepath.Join(t.TempDir(), "out")
	code, _, errOut = qconv("convert", src, dst, "--progress", "never")
	if code != 0 || !strings.Contains(errOut, "warning: BrandNewForCausalLM") || !strings.Contains(errOut, "name rules") {
		t.Fatalf("convert: exit %d, stderr %q", code, errOut)
	}
}
