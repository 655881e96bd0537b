package rules

import (
	"maps"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
)

// qconfig returns a config.json like transformers writes for a Llama
// quantized with nf4, double quant, uint8 storage, bf16 compute, dtype
// bfloat16, then applies edits: a nil value deletes the key, keys starting
// with "q." are in quantization_config.
func qconfig(edits map[string]any) map[string]any {
	q := map[string]any{
		"_load_in_4bit": true, "_load_in_8bit": false,
		"bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
		"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": true,
		"llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false,
		"llm_int8_skip_modules": nil, "llm_int8_threshold": 6.0,
		"load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes",
	}
	c := map[string]any{"architectures": []string{"LlamaForCausalLM"}, "dtype": "bfloat16", "model_type": "llama", "quantization_config": q}
	for k, v := range edits {
		m, key := c, k
		if len(k) > 2 && k[:2] == "q." {
			m, key = q, k[2:]
		}
		if v == nil {
			delete(m, key)
		} else {
			m[key] = v
		}
	}
	return c
}

// plain is a config without quantization.
func plain(dt string) map[string]any {
	return map[string]any{"architectures": []string{"LlamaForCausalLM"}, "dtype": dt, "model_type": "llama"}
}

// modelDir writes config (a string as is, a map as JSON, nil for none)
// and model.safetensors holding dense and the weights of qs.
func modelDir(config any, dense []tensorFix, qs ...qspec) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		ts := append([]tensorFix(nil), dense...)
		for _, q := range qs {
			ts = append(ts, quantTensors(q)...)
		}
		writeST(t, filepath.Join(dir, "model.safetensors"), pt, ts)
		switch c := config.(type) {
		case nil:
		case string:
			writeFile(t, filepath.Join(dir, "config.json"), []byte(c))
		default:
			writeJSON(t, filepath.Join(dir, "config.json"), c)
		}
		return dir
	}
}

func dense(name string, d dtype.DType, shape ...int64) tensorFix {
	return tensorFix{Name: name, DType: d, Shape: shape}
}

var (
	bf16Dense = []tensorFix{norm, dense("model.embed_tokens.weight", dtype.BF16, 32, 64)}
	f32Dense  = []tensorFix{dense("model.norm.weight", dtype.F32, 64), dense("model.embed_tokens.weight", dtype.F32, 32, 64)}
	nodq      = with(std, func(q *qspec) { q.dq = false })
	fp4       = with(std, func(q *qspec) { q.qt = bnb.FP4 })
	f32store  = with(std, func(q *qspec) { q.storage = dtype.F32 })
)

func edits(kv ...any) map[string]any {
	m := map[string]any{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	return maps.Clone(m)
}

var configCases = []ruleCase{
	{rule: "CFG001", name: "truncated", want: []string{"CFG001"}, build: modelDir(`{"dtype": "bfloat16",`, bf16Dense)},
	{rule: "CFG001", name: "duplicate-key", want: []string{"CFG001"}, build: modelDir(`{"dtype": "bfloat16", "dtype": "float16"}`, bf16Dense)},
	{rule: "CFG001", name: "python-infinity", lookalike: true, build: modelDir(`{"dtype": "bfloat16", "max_norm": Infinity}`, bf16Dense)},
	{rule: "CFG002", name: "no-quantization-config", want: []string{"CFG002"}, build: modelDir(plain("bfloat16"), bf16Dense, std)},
	{rule: "CFG002", name: "no-config-json", want: []string{"CFG002"}, build: modelDir(nil, bf16Dense, std)},
	{rule: "CFG002", name: "8bit-config", want: []string{"CFG002"},
		build: modelDir(qconfig(edits("q.load_in_4bit", false, "q._load_in_4bit", false, "q.load_in_8bit", true)), bf16Dense, std)},
	{rule: "CFG002", name: "quantized-with-config", lookalike: true, build: modelDir(qconfig(nil), bf16Dense, std)},
	{rule: "CFG002", name: "quantized-file-alone", lookalike: true, build: quantFile(nil, std)},
	{rule: "CFG003", name: "config-copied-to-dense", want: []string{"CFG003"}, build: modelDir(qconfig(nil), bf16Dense)},
	{rule: "CFG003", name: "weight-with-two-states", lookalike: true, want: []string{"BNB003 " + qw},
		build: modelDir(qconfig(nil), append(slices.Clone(bf16Dense), stateBlob(stateFP4, string(bnb.QuantState{QuantType: bnb.FP4, Blocksize: 64, DType: "bfloat16", Shape: []int64{64, 96}}.MarshalPython()))), std)},
	{rule: "CFG003", name: "gptq-config", lookalike: true, build: modelDir(map[string]any{"dtype": "bfloat16", "quantization_config": map[string]any{"quant_method": "gptq", "bits": 4}}, bf16Dense)},
	{rule: "CFG004", name: "nf4-config-fp4-tensors", want: []string{"CFG004 " + qw}, build: modelDir(qconfig(nil), bf16Dense, fp4)},
	{rule: "CFG004", name: "default-fp4", lookalike: true,
		build: modelDir(qconfig(edits("q.bnb_4bit_quant_type", nil, "q.bnb_4bit_use_double_quant", nil, "q.bnb_4bit_compute_dtype", nil, "dtype", "float32")), f32Dense,
			with(nodq, func(q *qspec) { q.qt = bnb.FP4; q.dtype = "float32" }))},
	{rule: "CFG005", name: "dq-tensors-config-false", want: []string{"CFG005 " + qw}, build: modelDir(qconfig(edits("q.bnb_4bit_use_double_quant", false)), bf16Dense, std)},
	{rule: "CFG005", name: "no-dq-both", lookalike: true, build: modelDir(qconfig(edits("q.bnb_4bit_use_double_quant", false)), bf16Dense, nodq)},
	{rule: "CFG006", name: "f32-tensors-uint8-config", want: []string{"CFG006 " + qw, "BNB001 " + qw}, build: modelDir(qconfig(nil), bf16Dense, f32store)},
	{rule: "CFG006", name: "u8-tensors-float32-config", want: []string{"CFG006 " + qw}, build: modelDir(qconfig(edits("q.bnb_4bit_quant_storage", "float32")), bf16Dense, std)},
	{rule: "CFG006", name: "bogus-storage", want: []string{"CFG006"}, build: modelDir(qconfig(edits("q.bnb_4bit_quant_storage", "uint4")), bf16Dense, std)},
	{rule: "CFG006", name: "f32-tensors-float32-config", lookalike: true, want: []string{"BNB001 " + qw},
		build: modelDir(qconfig(edits("q.bnb_4bit_quant_storage", "float32")), bf16Dense, f32store)},
	{rule: "CFG007", name: "int8-compute", want: []string{"CFG007"}, build: modelDir(qconfig(edits("q.bnb_4bit_compute_dtype", "int8")), bf16Dense, std)},
	{rule: "CFG007", name: "fp16-compute-bf16-model", lookalike: true, build: modelDir(qconfig(edits("q.bnb_4bit_compute_dtype", "float16")), bf16Dense, std)},
	{rule: "CFG008", name: "f32-compute-bf16-model", want: []string{"CFG008"}, build: modelDir(qconfig(edits("q.bnb_4bit_compute_dtype", "float32")), bf16Dense, std)},
	{rule: "CFG008", name: "default-compute-f32-model", lookalike: true,
		build: modelDir(qconfig(edits("q.bnb_4bit_compute_dtype", nil, "dtype", "float32")), f32Dense, with(std, func(q *qspec) { q.dtype = "float32" }))},
	{rule: "CFG009", name: "f16-tensors-bf16-config", want: []string{"CFG009 lm_head.weight"},
		build: modelDir(plain("bfloat16"), []tensorFix{dense("model.norm.weight", dtype.F16, 64), dense("lm_head.weight", dtype.F16, 8, 64)})},
	{rule: "CFG009", name: "bf16-tensors-f32-config", want: []string{"CFG009 model.embed_tokens.weight"}, build: modelDir(qconfig(edits("dtype", "float32")), bf16Dense, std)},
	{rule: "CFG009", name: "torch-dtype-v4-with-prefix", lookalike: true, build: modelDir(map[string]any{"torch_dtype": "torch.bfloat16"}, append(bf16Dense, dense("x.ids", dtype.I64, 4)))},
	{rule: "CFG010", name: "f32-lm-head", want: []string{"CFG010 lm_head.weight"},
		build: modelDir(qconfig(nil), append(bf16Dense, dense("lm_head.weight", dtype.F32, 32, 64)), std)},
	{rule: "CFG010", name: "f32-only-in-quant-stats", lookalike: true, build: modelDir(qconfig(edits("q.bnb_4bit_use_double_quant", false)), bf16Dense, nodq)},
	{rule: "CFG011", name: "leaked-f32", want: []string{"CFG011 model.embed_tokens.weight", "BNB001 " + qw},
		build: modelDir(qconfig(edits("dtype", "float32", "q.bnb_4bit_quant_storage", "float32")), f32Dense, with(f32store, func(q *qspec) { q.dtype = "float32" }))},
	{rule: "CFG011", name: "leaked-no-dtype", want: []string{"CFG011 model.embed_tokens.weight"},
		build: modelDir(qconfig(edits("dtype", nil)), f32Dense, std)},
	{rule: "CFG011", name: "f32-compute-f32-model", lookalike: true,
		build: modelDir(qconfig(edits("dtype", "float32", "q.bnb_4bit_compute_dtype", "float32")), f32Dense, with(std, func(q *qspec) { q.dtype = "float32" }))},
}

func TestConfigRules(t *testing.T) {
	runCases(t, configCases)
	checkCoverage(t, configCases, "CFG")
}

// Findings give sizes in the decimal units of the rest of qconv.
func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{16: "16 B", 999: "999 B", 1000: "1.00 kB", 999_994: "999.99 kB", 999_995: "1.00 MB", 3_800_000_000: "3.80 GB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
