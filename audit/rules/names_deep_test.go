package rules

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

func f32t(name string, shape []int64, vals ...float32) tensorFix {
	return tensorFix{Name: name, DType: dtype.F32, Shape: shape, Data: f32bytes(vals)}
}

// adapterDir writes a PEFT adapter directory.
func adapterDir(ts ...tensorFix) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		writeST(t, filepath.Join(dir, "adapter_model.safetensors"), pt, ts)
		writeJSON(t, filepath.Join(dir, "adapter_config.json"), map[string]any{"peft_type": "LORA", "r": 1})
		return dir
	}
}

var (
	loraA = f32t("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", []int64{1, 2}, 1, 2)
	loraB = f32t("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", []int64{2, 1}, 1, 2)
	one   = f32t("model.norm.weight", []int64{2}, 1, 1)
)

var nameCases = []ruleCase{
	{rule: "NAME001", name: "peft-prefix", want: []string{"NAME001 base_model.model.lm_head.weight"},
		build: file(pt, f32t("base_model.model.model.norm.weight", []int64{2}, 1, 1), f32t("base_model.model.lm_head.weight", []int64{2, 2}, 1, 2, 3, 4))},
	{rule: "NAME001", name: "adapter-dir", lookalike: true, build: adapterDir(loraA, loraB)},
	{rule: "NAME001", name: "base-model-field", lookalike: true, build: file(pt, f32t("model.base_model.proj.weight", []int64{2}, 1, 2))},
	{rule: "NAME002", name: "base-layer", want: []string{"NAME002 model.layers.0.self_attn.q_proj.base_layer.weight"},
		build: file(pt, f32t("model.layers.0.self_attn.q_proj.base_layer.weight", []int64{2, 2}, 1, 2, 3, 4), one)},
	{rule: "NAME002", name: "base-layer-norm", lookalike: true, build: file(pt, f32t("model.base_layer_norm.weight", []int64{2}, 1, 2))},
	{rule: "NAME003", name: "unmerged-lora", want: []string{"NAME001 " + loraA.Name, "NAME003 " + loraA.Name},
		build: file(pt, loraA, loraB)},
	{rule: "NAME003", name: "lora-default-adapter", want: []string{"NAME003 model.layers.0.mlp.up_proj.lora_B.default.weight"},
		build: file(pt, f32t("model.layers.0.mlp.up_proj.lora_B.default.weight", []int64{2}, 1, 2), one)},
	{rule: "NAME003", name: "flora-name", lookalike: true, build: file(pt, f32t("model.flora_A.weight", []int64{2}, 1, 2), one)},
	{rule: "NAME003", name: "adapter-file", lookalike: true,
		build: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "adapter_model.safetensors")
			writeST(t, p, pt, []tensorFix{loraA, loraB})
			return p
		}},
}

func TestNameRules(t *testing.T) {
	runCases(t, nameCases)
	checkCoverage(t, nameCases, "NAME")
}

var (
	nan = float32(math.NaN())
	inf = float32(math.Inf(1))
)

// absmaxEdit replaces the group's F32 absmax values.
func absmaxEdit(vals ...float32) func([]tensorFix) []tensorFix {
	return func(ts []tensorFix) []tensorFix {
		for i := range ts {
			if ts[i].Name == qw+".absmax" {
				ts[i].Data = f32bytes(vals)
			}
		}
		return ts
	}
}

var small = qspec{base: qw, shape: []int64{4, 64}} // 4 blocks, no double quant

var deepCases = []ruleCase{
	{rule: "DEEP001", name: "nan", deep: true, want: []string{"DEEP001 w"}, build: file(pt, f32t("w", []int64{2, 2}, 1, nan, 3, 4))},
	{rule: "DEEP001", name: "bf16-inf", deep: true, want: []string{"DEEP001 w"},
		build: file(pt, tensorFix{Name: "w", DType: dtype.BF16, Shape: []int64{2}, Data: []byte{0x80, 0x3f, 0x80, 0x7f}})},
	{rule: "DEEP001", name: "f32-max", deep: true, lookalike: true, build: file(pt, f32t("w", []int64{2, 2}, math.MaxFloat32, -math.MaxFloat32, 1, 2))},
	{rule: "DEEP001", name: "nan-not-deep", lookalike: true, build: file(pt, f32t("w", []int64{2, 2}, 1, nan, 3, 4))},
	{rule: "DEEP002", name: "zero-matrix", deep: true, want: []string{"DEEP002 w"}, build: file(pt, f32t("w", []int64{2, 2}, 0, 0, 0, 0))},
	{rule: "DEEP002", name: "zero-bias", deep: true, lookalike: true, build: file(pt, f32t("w.bias", []int64{2}, 0, 0), f32t("w", []int64{1, 2}, 0, 1))},
	{rule: "DEEP003", name: "inf-absmax", deep: true, want: []string{"BNB013 " + qw + ".absmax", "DEEP003 " + qw + ".absmax"}, build: quantFile(absmaxEdit(1, inf, 1, 1), small)},
	{rule: "DEEP003", name: "inf-nested-absmax", deep: true, want: []string{"BNB013 " + qw + ".nested_absmax", "DEEP003 " + qw + ".absmax"},
		build: quantFile(func(ts []tensorFix) []tensorFix {
			for i := range ts {
				if ts[i].Name == qw+".nested_absmax" {
					ts[i].Data = f32bytes([]float32{inf})
				}
				if ts[i].Name == qw+".absmax" {
					ts[i].Data = make([]byte, 96)
					ts[i].Data[5] = 200 // a positive code: +Inf after scaling
				}
			}
			return ts
		}, std)},
	{rule: "DEEP003", name: "huge-absmax", deep: true, lookalike: true, build: quantFile(absmaxEdit(1, 3e38, 1, 1), small)},
	{rule: "DEEP004", name: "zero-absmax", deep: true, want: []string{"DEEP004 " + qw + ".absmax"}, build: quantFile(absmaxEdit(1, 0, 1, 1), small)},
	{rule: "DEEP004", name: "tiny-absmax", deep: true, lookalike: true, build: quantFile(absmaxEdit(1, 1e-30, 1, 1), small)},
	{rule: "DEEP005", name: "constant-matrix", deep: true, want: []string{"DEEP005 w"}, build: file(pt, f32t("w", []int64{2, 3}, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5))},
	{rule: "DEEP005", name: "ones-vector", deep: true, lookalike: true, build: file(pt, f32t("model.norm.weight", []int64{6}, 1, 1, 1, 1, 1, 1))},
	{rule: "DEEP005", name: "equal-but-last", deep: true, lookalike: true, build: file(pt, f32t("w", []int64{2, 3}, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25))},
}

func TestDeepRules(t *testing.T) {
	runCases(t, deepCases)
	checkCoverage(t, deepCases, "DEEP")
}
