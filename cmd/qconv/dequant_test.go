package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDequantCLI(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "dense")
	code, out, errOut := qconv("dequant", filepath.Join(models, "tiny-llama-bf16-fp4-dq-u8"), dst, "-j", "2")
	if code != exitOK || errOut != "" || !strings.Contains(out, "14 weights dequantized (bfloat16), 7 tensors kept") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, f := range []string{"model.safetensors", "config.json", "generation_config.json"} {
		if _, err := os.Stat(filepath.Join(dst, f)); err != nil {
			t.Error(err)
		}
	}

	dst2 := filepath.Join(t.TempDir(), "dense32")
	code, out, _ = qconv("dequant", "--json", "--dtype", "f32", filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8"), dst2)
	var sum dequantSummary
	if code != exitOK || json.Unmarshal([]byte(out), &sum) != nil {
		t.Fatalf("--json: exit %d, %q", code, out)
	}
	if sum.DType != "float32" || sum.Weights != 14 || sum.Kept != 7 || len(sum.Files) != 1 || sum.OutputBytes <= sum.InputBytes {
		t.Errorf("--json summary %+v", sum)
	}
}

func TestDequantCLIErrors(t *testing.T) {
	tmp := t.TempDir()
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"dequant", filepath.Join(models, "tiny-llama-bf16-nf4-u8")}, "expected SRC and DST"},
		{[]string{"dequant", filepath.Join(models, "tiny-llama-bf16-nf4-u8"), filepath.Join(tmp, "a"), "--dtype", "f8"}, "--dtype"},
		{[]string{"dequant", filepath.Join(models, "tiny-llama-bf16-nf4-u8"), filepath.Join(tmp, "a"), "--max-shard-size", "x"}, "--max-shard-size"},
		{[]string{"dequant", filepath.Join(models, "tiny-llama-bf16-nf4-u8"), filepath.Join(tmp, "a"), "--progress", "sometimes"}, "--progress"},
		{[]string{"dequant", filepath.Join(models, "tiny-llama-bf16"), filepath.Join(tmp, "b")}, "no bitsandbytes 4-bit weights"},
		{[]string{"dequant", filepath.Join(tmp, "none"), filepath.Join(tmp, "c")}, "none"},
		{[]string{"dequant", filepath.Join(models, "tiny-llama-bf16-nf4-u8"), filepath.Join(tmp, "a"), "-j", "-2"}, "qconv dequant: -j -2: want 0 (all CPUs) or more"},
		{[]string{"dequant", filepath.Join(models, "tiny-llama-bf16-nf4-u8"), filepath.Join(tmp, "a"), "--dtype", "int4"}, `qconv dequant: --dtype: unknown dtype "int4" (want auto, bf16, f16 or f32)`},
		{[]string{"dequant", "../../testdata/arch/falcon--FalconForCausalLM/out", filepath.Join(tmp, "d")}, `FalconForCausalLM (model_type "falcon"): transformers quantizes no layer`},
		{[]string{"verify", "../../testdata/arch/falcon--FalconForCausalLM/src", "../../testdata/arch/falcon--FalconForCausalLM/out"}, `FalconForCausalLM (model_type "falcon"): transformers quantizes no layer`},
	} {
		code, _, errOut := qconv(c.args...)
		if code != exitError || !strings.Contains(errOut, c.msg) {
			t.Errorf("qconv %q: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.msg)
		}
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("failed runs left %v", ents)
	}
}

// TestDequantCLIForce: a non-empty DST is refused, and with --force gets
// the output (stale weight files removed, other files kept).
func TestDequantCLIForce(t *testing.T) {
	dst := t.TempDir()
	for _, name := range []string{"keep.txt", "model-00001-of-00002.safetensors"} {
		os.WriteFile(filepath.Join(dst, name), []byte("old"), 0o666)
	}
	src := filepath.Join(models, "tiny-llama-bf16-nf4-u8")
	if code, _, errOut := qconv("dequant", src, dst); code != exitError || !strings.Contains(errOut, "not empty (use --force") {
		t.Errorf("non-empty DST: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := qconv("dequant", src, dst, "--force", "--progress=never", "-j", "0"); code != exitOK || errOut != "" {
		t.Fatalf("--force: exit %d, stderr %q", code, errOut)
	}
	var names []string
	ents, _ := os.ReadDir(dst)
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := "config.json generation_config.json keep.txt model.safetensors"; strings.Join(names, " ") != want {
		t.Errorf("--force: DST holds %v, want %s", names, want)
	}
}
