package rules

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/arch"
	"github.com/qconv/qconv/formats/bnb"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

const archRefs = "../../testdata/arch"

// TestArchReferences audits every reference checkpoint that transformers
// wrote (testdata/arch/*/out) and its bf16 source: transformers' own
// quantized sets must pass the ARCH rules without a finding, and the
// whole audit without an error or warning, except Falcon's output, which
// transformers saved with a 4-bit quantization_config and no 4-bit tensor
// (CFG003).
func TestArchReferences(t *testing.T) {
	outs, err := filepath.Glob(filepath.Join(archRefs, "*", "out"))
	if err != nil || len(outs) < 40 {
		t.Fatalf("%d reference families (%v), want at least 40", len(outs), err)
	}
	for _, out := range outs {
		family := filepath.Base(filepath.Dir(out))
		for _, dir := range []string{out, filepath.Join(filepath.Dir(out), "src")} {
			rep, err := audit.Run([]string{dir}, audit.Options{Rules: All()})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range rep.PathErrors {
				t.Errorf("%s: %v", family, e)
			}
			for _, d := range rep.Findings {
				if d.Rule == "CFG003" && family == falcon && dir == out {
					continue
				}
				if audit.GroupPrefix(d.Rule) == "ARCH" || d.Severity >= audit.Warning {
					t.Errorf("%s/%s: %s %s: %s", family, filepath.Base(dir), d.Rule, d.Tensor, d.Message)
				}
			}
		}
	}
}

// refTensors reads every tensor of a reference checkpoint's
// model.safetensors.
func refTensors(t *testing.T, dir string) []tensorFix {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ts []tensorFix
	for _, ti := range f.Tensors() {
		b, err := f.ReadTensor(ti.Name)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tensorFix{Name: ti.Name, DType: ti.DType, Shape: ti.Shape, Data: b})
	}
	return ts
}

// tensorEdit changes the tensors of a reference copy.
type tensorEdit func(t *testing.T, ts []tensorFix) []tensorFix

// quantize replaces the dense tensor name by a packed 4-bit weight of its
// shape with its quant state, as bitsandbytes saves one.
func quantize(name string) tensorEdit {
	return func(t *testing.T, ts []tensorFix) []tensorFix {
		i := slices.IndexFunc(ts, func(x tensorFix) bool { return x.Name == name })
		if i < 0 || ts[i].DType == dtype.U8 {
			t.Fatalf("no dense tensor %q to quantize", name)
		}
		q := qspec{base: name, shape: ts[i].Shape, dq: true}
		return append(slices.Delete(slices.Clone(ts), i, i+1), quantTensors(q)...)
	}
}

// densify replaces the packed 4-bit weight name and its quant state by a
// dense bfloat16 tensor of the quant state's shape (zeros).
func densify(name string) tensorEdit {
	return func(t *testing.T, ts []tensorFix) []tensorFix {
		var shape []int64
		for _, x := range ts {
			if strings.HasPrefix(x.Name, name+".quant_state.") {
				st, err := bnb.ParseQuantState(x.Data)
				if err != nil {
					t.Fatal(err)
				}
				shape = st.Shape
			}
		}
		if shape == nil {
			t.Fatalf("no packed weight %q to make dense", name)
		}
		out := slices.DeleteFunc(slices.Clone(ts), func(x tensorFix) bool {
			return x.Name == name || strings.HasPrefix(x.Name, name+".")
		})
		return append(out, tensorFix{Name: name, DType: dtype.BF16, Shape: shape})
	}
}

// refCopy returns a build function writing a copy of the reference
// checkpoint testdata/arch/<family>/out with its tensors changed by edits
// and, if cfg is not nil, its config.json's quantization_config or
// top-level keys changed by cfg.
func refCopy(family string, cfg func(c, q map[string]any), edits ...tensorEdit) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		src := filepath.Join(archRefs, family, "out")
		ts := refTensors(t, src)
		for _, e := range edits {
			ts = e(t, ts)
		}
		writeST(t, filepath.Join(dir, "model.safetensors"), pt, ts)
		b, err := os.ReadFile(filepath.Join(src, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		if cfg != nil {
			var c map[string]any
			if err := json.Unmarshal(b, &c); err != nil {
				t.Fatal(err)
			}
			q, _ := c["quantization_config"].(map[string]any)
			cfg(c, q)
			writeJSON(t, filepath.Join(dir, "config.json"), c)
		} else {
			writeFile(t, filepath.Join(dir, "config.json"), b)
		}
		return dir
	}
}

// skipModules sets quantization_config.llm_int8_skip_modules.
func skipModules(mods ...string) func(c, q map[string]any) {
	return func(_, q map[string]any) { q["llm_int8_skip_modules"] = append([]string{}, mods...) }
}

const (
	mixtral = "mixtral--MixtralForCausalLM"
	llama   = "llama--LlamaForCausalLM"
	qwenMoE = "qwen2_moe--Qwen2MoeForCausalLM"
	t5      = "t5--T5ForConditionalGeneration"
	falcon  = "falcon--FalconForCausalLM"
	gpt2    = "gpt2--GPT2LMHeadModel"
)

var archCases = []ruleCase{
	// ARCH001: quantized tensors that transformers keeps dense.
	{rule: "ARCH001", name: "mixtral-expert", build: refCopy(mixtral, nil, quantize("model.layers.0.block_sparse_moe.experts.3.w1.weight")),
		want: []string{"ARCH001 model.layers.0.block_sparse_moe.experts.3.w1.weight"}},
	{rule: "ARCH001", name: "mixtral-router", build: refCopy(mixtral, nil, quantize("model.layers.1.block_sparse_moe.gate.weight")),
		want: []string{"ARCH001 model.layers.1.block_sparse_moe.gate.weight"}},
	{rule: "ARCH001", name: "qwen2moe-expert-and-router", build: refCopy(qwenMoE, nil,
		quantize("model.layers.0.mlp.experts.2.down_proj.weight"), quantize("model.layers.0.mlp.gate.weight")),
		want: []string{"ARCH001 model.layers.0.mlp.experts.2.down_proj.weight", "ARCH001 model.layers.0.mlp.gate.weight"}},
	{rule: "ARCH001", name: "llama-norm-include", build: refCopy(llama, nil, quantize("model.norm.weight"), quantize("model.layers.1.input_layernorm.weight")),
		want: []string{"ARCH001 model.layers.1.input_layernorm.weight", "ARCH001 model.norm.weight",
			// A 1-D quant state in a model is invalid in itself (formats/bnb.CheckShape).
			"BNB004 model.layers.1.input_layernorm.weight.quant_state.bitsandbytes__nf4", "BNB004 model.norm.weight.quant_state.bitsandbytes__nf4"}},
	{rule: "ARCH001", name: "llama-embedding", build: refCopy(llama, nil, quantize("model.embed_tokens.weight")),
		want: []string{"ARCH001 model.embed_tokens.weight"}},
	{rule: "ARCH001", name: "llama-lm-head", build: refCopy(llama, nil, quantize("lm_head.weight")),
		want: []string{"ARCH001 lm_head.weight"}},
	{rule: "ARCH001", name: "t5-keep-in-fp32-and-relative-bias", build: refCopy(t5, nil,
		quantize("decoder.block.0.layer.2.DenseReluDense.wo.weight"), quantize("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")),
		want: []string{"ARCH001 decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "ARCH001 decoder.block.0.layer.2.DenseReluDense.wo.weight"}},
	{rule: "ARCH001", name: "falcon-refused", build: refCopy(falcon, nil, quantize("transformer.h.0.mlp.dense_h_to_4h.weight")),
		want: []string{"ARCH001 transformer.h.0.mlp.dense_h_to_4h.weight"}},
	{rule: "ARCH001", name: "llama-linear-named-in-skip-modules", build: refCopy(llama, skipModules("lm_head", "model.layers.0.mlp.up_proj")),
		want: []string{"ARCH001 model.layers.0.mlp.up_proj.weight"}},
	// Look-alikes: names with "expert", "gate" or "norm" that transformers
	// does quantize, and a quantized lm_head that an explicit skip list
	// lets transformers load.
	{rule: "ARCH001", name: "qwen2moe-shared-expert-and-its-gate", lookalike: true, build: refCopy(qwenMoE, nil)},
	{rule: "ARCH001", name: "llama-lm-head-explicit-empty-skip-list", lookalike: true, build: refCopy(llama, skipModules(), quantize("lm_head.weight"))},
	{rule: "ARCH001", name: "llama-gate-proj-and-dense-norm", lookalike: true, build: refCopy(llama, nil)},
	{rule: "ARCH001", name: "unknown-architecture-norm", lookalike: true, build: refCopy(llama, func(c, _ map[string]any) {
		c["architectures"] = []string{"NoSuchForCausalLM"}
		c["model_type"] = "no_such"
	}, quantize("model.norm.weight")),
		want: []string{"ARCH003", "BNB004 model.norm.weight.quant_state.bitsandbytes__nf4"}},

	// ARCH002: Linear weights left dense.
	{rule: "ARCH002", name: "llama-dense-linear", build: refCopy(llama, nil, densify("model.layers.0.mlp.down_proj.weight")),
		want: []string{"ARCH002 model.layers.0.mlp.down_proj.weight"}},
	{rule: "ARCH002", name: "gpt2-dense-conv1d", build: refCopy(gpt2, nil, densify("transformer.h.1.attn.c_attn.weight")),
		want: []string{"ARCH002 transformer.h.1.attn.c_attn.weight"}},
	{rule: "ARCH002", name: "llama-skip-list-without-lm-head", build: refCopy(llama, skipModules("model.layers.0.mlp.down_proj"), densify("model.layers.0.mlp.down_proj.weight")),
		want: []string{"ARCH002 lm_head.weight"}},
	{rule: "ARCH002", name: "llama-dense-linear-listed-in-skip-modules", lookalike: true,
		build: refCopy(llama, skipModules("lm_head", "model.layers.0.mlp.down_proj"), densify("model.layers.0.mlp.down_proj.weight"))},
	{rule: "ARCH002", name: "llama-skip-suffix-pattern", lookalike: true,
		build: refCopy(llama, skipModules("lm_head", "mlp.down_proj"), densify("model.layers.0.mlp.down_proj.weight"), densify("model.layers.1.mlp.down_proj.weight"))},
	{rule: "ARCH002", name: "mixtral-dense-experts-and-router", lookalike: true, build: refCopy(mixtral, nil)},
	{rule: "ARCH002", name: "unknown-architecture-dense-linear", lookalike: true, build: refCopy(llama, func(c, _ map[string]any) {
		c["architectures"] = []string{"NoSuchForCausalLM"}
		delete(c, "model_type")
	}, densify("model.layers.0.mlp.down_proj.weight")),
		want: []string{"ARCH003"}},

	// ARCH003: what the table does not know.
	{rule: "ARCH003", name: "unknown-architecture", build: refCopy(llama, func(c, _ map[string]any) {
		c["architectures"] = []string{"NoSuchForCausalLM"}
		c["model_type"] = "no_such"
	}), want: []string{"ARCH003"}},
	{rule: "ARCH003", name: "no-architecture-named", lookalike: true, build: refCopy(llama, func(c, _ map[string]any) {
		delete(c, "architectures")
		delete(c, "model_type")
	})},
	{rule: "ARCH003", name: "unknown-tensor-of-known-architecture", build: refCopy(llama, nil, func(t *testing.T, ts []tensorFix) []tensorFix {
		return append(ts, quantTensors(qspec{base: "model.extra_adapter.weight", shape: []int64{64, 64}, dq: true})...)
	}), want: []string{"ARCH003"}},
	{rule: "ARCH003", name: "model-type-only", lookalike: true, build: refCopy(llama, func(c, _ map[string]any) {
		delete(c, "architectures")
	})},
	{rule: "ARCH003", name: "dense-unknown-architecture", lookalike: true, build: func(t *testing.T, dir string) string {
		writeJSON(t, filepath.Join(dir, "config.json"), map[string]any{"architectures": []string{"NoSuchForCausalLM"}, "model_type": "no_such", "dtype": "bfloat16"})
		writeST(t, filepath.Join(dir, "model.safetensors"), pt, []tensorFix{norm})
		return dir
	}},
}

func TestArchRules(t *testing.T) {
	runCases(t, archCases)
	checkCoverage(t, archCases, "ARCH")
}

// The ARCH rules' documentation names the transformers and bitsandbytes
// versions the table came from; a regenerated table must update it.
func TestArchDocsNameTableVersions(t *testing.T) {
	tb := arch.Default()
	minor := func(v string) string { // "5.17.0" -> "5.17"
		parts := strings.SplitN(v, ".", 3)
		return strings.Join(parts[:min(2, len(parts))], ".")
	}
	for _, r := range All() {
		if audit.GroupPrefix(r.ID) != "ARCH" {
			continue
		}
		for _, want := range []string{"transformers " + minor(tb.Transformers), "bitsandbytes " + minor(tb.Bitsandbytes)} {
			if !strings.Contains(strings.Join(strings.Fields(r.Doc), " "), want) {
				t.Errorf("%s: documentation does not name %q, the table's source", r.ID, want)
			}
		}
	}
}
