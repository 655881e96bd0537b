package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const peftData = "../../testdata/peft"

func TestMergeCLI(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "merged")
	code, out, errOut := qconv("merge", filepath.Join(peftData, "llama-base"), filepath.Join(peftData, "llama-adapter"), dst, "-j", "2")
	if code != exitOK || errOut != "" || !strings.Contains(out, "15 LoRA modules merged (1 embeddings), 2 tensors replaced, 0 biases; dense bfloat16") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, f := range []string{"model.safetensors", "config.json", "generation_config.json"} {
		if _, err := os.Stat(filepath.Join(dst, f)); err != nil {
			t.Error(err)
		}
	}

	dst2 := filepath.Join(t.TempDir(), "merged-nf4")
	code, out, _ = qconv("merge", "--json", "--quantize", "--quant-type", "fp4", filepath.Join(peftData, "llama-base"), filepath.Join(peftData, "llama-adapter"), dst2)
	var sum mergeSummary
	if code != exitOK || json.Unmarshal([]byte(out), &sum) != nil {
		t.Fatalf("--json: exit %d, %q", code, out)
	}
	if !sum.Quantized || sum.QuantType != "fp4" || sum.Modules != 15 || sum.TensorsQuantized != 14 || sum.DType != "bfloat16" || len(sum.Files) != 1 {
		t.Errorf("--json summary %+v", sum)
	}

	// A 4-bit base comes out 4-bit with its own settings.
	dst3 := filepath.Join(t.TempDir(), "nf4")
	code, out, errOut = qconv("merge", filepath.Join(peftData, "llama-base-nf4"), filepath.Join(peftData, "llama-adapter"), dst3)
	if code != exitOK || !strings.Contains(out, "4-bit (nf4, blocksize 64, double quant), 14 tensors quantized") {
		t.Fatalf("4-bit base: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestMergeCLIErrors(t *testing.T) {
	tmp := t.TempDir()
	base, ad := filepath.Join(peftData, "llama-base"), filepath.Join(peftData, "llama-adapter")
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"merge", base, ad}, "expected BASE, ADAPTER and DST"},
		{[]string{"merge", base, ad, filepath.Join(tmp, "a"), "--quant-type", "fp4"}, "--quant-type only apply to a 4-bit output: add --quantize"},
		{[]string{"merge", base, ad, filepath.Join(tmp, "a"), "--quantize", "--blocksize", "7"}, "--blocksize 7"},
		{[]string{"merge", base, ad, filepath.Join(tmp, "a"), "--dtype", "f8"}, "--dtype"},
		{[]string{"merge", base, base, filepath.Join(tmp, "b")}, "not a PEFT adapter directory"},
		{[]string{"merge", filepath.Join(peftData, "qwen2-base"), filepath.Join(peftData, "qwen2-adapter"), filepath.Join(tmp, "c")}, "(lora_bias=True)"},
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
