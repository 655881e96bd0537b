package convert

import (
	"strings"

	"github.com/qconv/qconv/internal/pyjson"
)

// QuantizationConfig returns the "quantization_config" object transformers
// writes for the plan: BitsAndBytesConfig.to_dict() of a load_in_4bit
// config with the plan's quant type, double quant, compute dtype and
// uint8 storage. llm_int8_skip_modules is null for the default selection
// (transformers does not write its default skips) and otherwise the kept
// Linear-like modules (see the selection rules in select.go).
func (p *Plan) QuantizationConfig() *pyjson.Value {
	skip := pyjson.Null()
	if p.SkipModules != nil {
		skip = pyjson.Array()
		for _, m := range p.SkipModules {
			skip.Append(pyjson.String(m))
		}
	}
	return pyjson.Object(
		pyjson.Member{Key: "_load_in_4bit", Value: pyjson.Bool(true)},
		pyjson.Member{Key: "_load_in_8bit", Value: pyjson.Bool(false)},
		pyjson.Member{Key: "bnb_4bit_compute_dtype", Value: pyjson.String(p.ComputeDType.TorchName())},
		pyjson.Member{Key: "bnb_4bit_quant_storage", Value: pyjson.String("uint8")},
		pyjson.Member{Key: "bnb_4bit_quant_type", Value: pyjson.String(p.s.quant.String())},
		pyjson.Member{Key: "bnb_4bit_use_double_quant", Value: pyjson.Bool(p.s.doubleQuant)},
		pyjson.Member{Key: "llm_int8_enable_fp32_cpu_offload", Value: pyjson.Bool(false)},
		pyjson.Member{Key: "llm_int8_has_fp16_weight", Value: pyjson.Bool(false)},
		pyjson.Member{Key: "llm_int8_skip_modules", Value: skip},
		pyjson.Member{Key: "llm_int8_threshold", Value: pyjson.Number("6.0")},
		pyjson.Member{Key: "load_in_4bit", Value: pyjson.Bool(true)},
		pyjson.Member{Key: "load_in_8bit", Value: pyjson.Bool(false)},
		pyjson.Member{Key: "quant_method", Value: pyjson.String("bitsandbytes")},
	)
}

// ConfigJSON returns the bytes of the output config.json: the input
// config with quantization_config added and the model dtype recorded, as
// transformers' save_pretrained writes it (json.dumps(indent=2,
// sort_keys=True) plus a newline).
//
// The dtype goes to "dtype" (transformers v5's key, added if absent);
// an input that also has the legacy "torch_dtype" key gets it updated to
// the same value, so that v4 readers agree. When tensors keep mixed
// dtypes (auto with no config dtype and no common dtype) both keys are
// left as they are. A dense output (Options.Dense) gets no
// quantization_config.
func (p *Plan) ConfigJSON(cfg *pyjson.Value) []byte {
	out := cfg.Clone()
	if out == nil || out.Kind() != pyjson.KindObject {
		out = pyjson.Object()
	}
	if name := p.ModelDType.TorchName(); name != "" {
		out.Set("dtype", pyjson.String(name))
		if out.Has("torch_dtype") {
			out.Set("torch_dtype", pyjson.String(name))
		}
	}
	if name := p.ModelDType.TorchName(); name != "" && p.Arch != nil {
		// transformers writes the dtype into the sub-configs of composite
		// models (vision-language models) too.
		for _, path := range p.Arch.SubconfigDType {
			sub := out
			for _, k := range strings.Split(path, ".") {
				sub = sub.Get(k)
			}
			if sub.Kind() == pyjson.KindObject {
				sub.Set("dtype", pyjson.String(name))
			}
		}
	}
	if p.Arch != nil && p.Arch.ConfigModelType != "" && out.Has("model_type") {
		// The model_type reuses another's class, whose config transformers
		// writes.
		out.Set("model_type", pyjson.String(p.Arch.ConfigModelType))
	}
	if p.s.dense {
		out.Delete("quantization_config")
	} else {
		out.Set("quantization_config", p.QuantizationConfig())
	}
	return append(out.MarshalIndentSorted(), '\n')
}
