package convert

import (
	"fmt"
	"path"
	"strings"

	"github.com/qconv/qconv/formats/arch"
	"github.com/qconv/qconv/formats/dtype"
)

// Which tensors are quantized.
//
// transformers replaces a module by bitsandbytes' Linear4bit when its type
// is exactly torch.nn.Linear (not a subclass) or GPT-2's Conv1D and its
// name does not match modules_to_not_convert (the output embedding, tied
// weights, the last module, _keep_in_fp32_modules); the experts of a
// mixture-of-experts model are fused into 3-D parameters when it loads and
// its routers are not nn.Linear, so both stay dense. Only the ".weight" of
// such a module is quantized. A checkpoint does not say which module is
// which, so qconv looks the architecture (config.json's "architectures",
// else "model_type") up in formats/arch, a table generated from
// transformers itself, and decides every tensor as that table says.
//
// A tensor the table does not know (a layer kind the generator's tiny model
// lacked, whose name is not decided by its tail either) is kept if it
// cannot be a Linear weight (not a floating-point 2-D ".weight", or the
// output embedding) and is otherwise an error: qconv does not guess for a
// known architecture. An architecture the table does not know falls back
// to name rules (nameRule) with a warning: the 2-D ".weight" tensors of
// modules that are not an embedding, norm or output embedding.
//
// Skip globs keep matching tensors dense; include globs force quantization
// of matching floating-point tensors; skip wins. For a known architecture
// an include that would quantize what transformers cannot load as 4-bit
// (experts, routers, embeddings, norms, non-Linear parameters) is an
// error. When the resulting selection differs from the default one,
// config.json lists the kept Linear modules in llm_int8_skip_modules (full
// module names, which both transformers v4's substring rule and v5's
// prefix/suffix rule honour), so that transformers loads them as dense
// Linear layers.

// selector decides which tensors are quantized.
type selector struct {
	skip, include []string
	// arch is the checkpoint's architecture in formats/arch, or nil.
	arch *arch.Arch
}

// A choice is the selector's decision about one tensor.
type choice struct {
	quantize   bool
	transposed bool // a Conv1D weight, quantized as its transpose
	f32        bool // kept, and stored as float32 whatever the model dtype
	// reason is one of formats/arch's Reason constants.
	reason string
	// linear reports that the tensor is the weight of a module that
	// transformers would replace by Linear4bit unless told to skip it
	// (what llm_int8_skip_modules must list when it is kept).
	linear bool
}

// moduleName returns the name without its last dot-separated component.
func moduleName(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		return name[:i]
	}
	return ""
}

// lastComponent returns the last dot-separated component of name.
func lastComponent(name string) string {
	return name[strings.LastIndexByte(name, '.')+1:]
}

// isOutputEmbedding reports whether module is the output embedding.
func isOutputEmbedding(module string) bool {
	last := lastComponent(module)
	return last == "lm_head" || last == "embed_out"
}

// embeddingOrNorm returns the reason a module is an input embedding or a
// norm, judged by its last component, or "".
func embeddingOrNorm(module string) string {
	last := strings.ToLower(lastComponent(module))
	switch {
	case strings.Contains(last, "embed"), last == "wte", last == "wpe", last == "shared":
		return arch.ReasonEmbedding
	case strings.Contains(last, "norm"), last == "ln", strings.HasPrefix(last, "ln_"):
		return arch.ReasonNorm
	}
	return ""
}

// quantizable reports whether d is a dtype qconv can quantize from.
func quantizable(d dtype.DType) bool { return modelDType(d) }

// matrixWeight reports whether the tensor can be a Linear weight at all: a
// non-empty 2-D ".weight" (of any dtype).
func matrixWeight(name string, shape []int64) bool {
	return len(shape) == 2 && shape[0] > 0 && shape[1] > 0 && lastComponent(name) == "weight"
}

// genericKeep returns why a tensor cannot be a Linear weight, or "".
func genericKeep(name string, dt dtype.DType, shape []int64) string {
	switch {
	case lastComponent(name) == "bias":
		return arch.ReasonBias
	case lastComponent(name) != "weight":
		return arch.ReasonNotWeight
	case !dt.IsFloat():
		return arch.ReasonNotFloat
	case !matrixWeight(name, shape):
		return arch.ReasonNot2D
	}
	return ""
}

// nameRule is qconv's decision for an architecture the table does not
// know: quantize 2-D floating ".weight" tensors that are not embeddings,
// norms or the output embedding.
func nameRule(name string, dt dtype.DType, shape []int64) choice {
	if r := genericKeep(name, dt, shape); r != "" {
		return choice{reason: r}
	}
	m := moduleName(name)
	if isOutputEmbedding(m) {
		return choice{reason: arch.ReasonOutputEmbedding, linear: true}
	}
	if r := embeddingOrNorm(m); r != "" {
		return choice{reason: r}
	}
	// transformers 5 fuses the experts of every mixture-of-experts model
	// it knows into 3-D parameters and keeps them, and its routers are not
	// nn.Linear: an unknown MoE is safer with both dense.
	if strings.Contains("."+m+".", ".experts.") {
		return choice{reason: arch.ReasonExpert}
	}
	if last := strings.ToLower(lastComponent(m)); last == "gate" || strings.Contains(last, "router") {
		return choice{reason: arch.ReasonRouter}
	}
	return choice{quantize: true, reason: arch.ReasonFallback, linear: true}
}

// byDefault is the selection without --skip and --include.
func (s selector) byDefault(name string, dt dtype.DType, shape []int64) (choice, error) {
	if s.arch == nil {
		return nameRule(name, dt, shape), nil
	}
	d, ok := s.arch.Decide(name)
	if !ok {
		if r := genericKeep(name, dt, shape); r != "" {
			return choice{reason: r}, nil
		}
		if m := moduleName(name); s.arch.OutputEmbedding != "" && (m == s.arch.OutputEmbedding || strings.HasSuffix(m, "."+s.arch.OutputEmbedding)) {
			return choice{reason: arch.ReasonOutputEmbedding, linear: true}, nil
		}
		return choice{}, fmt.Errorf("convert: tensor %q: qconv's table for %s (from transformers %s) does not know this tensor, so it cannot tell whether transformers quantizes it; decide with --skip or --include",
			name, s.arch.Class, arch.Default().Transformers)
	}
	c := choice{quantize: d.Quantized(), transposed: d.Action == arch.QuantizeTransposed, f32: d.F32, reason: d.Reason}
	switch d.Reason {
	case arch.ReasonLinear, arch.ReasonConv1D, arch.ReasonOutputEmbedding, arch.ReasonTiedEmbedding, arch.ReasonKeepInFP32, arch.ReasonNotConverted:
		c.linear = true
	case arch.ReasonUnknownModule:
		c.linear = c.quantize
	}
	return c, nil
}

func globMatch(globs []string, name string) bool {
	m := moduleName(name)
	for _, g := range globs {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
		if m != "" {
			if ok, _ := path.Match(g, m); ok {
				return true
			}
		}
	}
	return false
}

// checkGlob reports a malformed glob.
func checkGlob(g string) error {
	if _, err := path.Match(g, ""); err != nil {
		return fmt.Errorf("convert: bad glob %q: %v", g, err)
	}
	return nil
}

// decide returns the choice for one tensor and its default choice (without
// --skip and --include), or an error if it is selected but cannot be
// quantized (an --include of a non-float tensor is ignored, not an error:
// include globs apply to floating-point tensors only).
func (s selector) decide(name string, dt dtype.DType, shape []int64) (got, def choice, err error) {
	def, derr := s.byDefault(name, dt, shape)
	if globMatch(s.skip, name) {
		return choice{reason: arch.ReasonUserSkip, f32: def.f32, linear: def.linear}, def, nil
	}
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	if globMatch(s.include, name) && dt.IsFloat() && n > 0 {
		if !quantizable(dt) {
			return def, def, fmt.Errorf("convert: tensor %q: cannot quantize dtype %v (want F32, BF16 or F16)", name, dt)
		}
		if derr == nil && s.arch != nil && !def.quantize && !def.linear {
			return def, def, fmt.Errorf("convert: tensor %q: --include would quantize a tensor that %s keeps dense (%s): transformers cannot load it as 4-bit; drop the --include",
				name, s.arch.Class, def.reason)
		}
		return choice{quantize: true, transposed: def.transposed, reason: arch.ReasonUserInclude, linear: true}, def, nil
	}
	if derr != nil {
		return def, def, derr
	}
	if (def.quantize && !quantizable(dt)) || (s.arch == nil && !quantizable(dt) && nameRule(name, dtype.F32, shape).quantize) {
		// A Linear weight in another dtype: F64, FP8, or the integer
		// storage of another quantization format.
		return def, def, fmt.Errorf("convert: tensor %q: unsupported dtype %v for a weight to quantize (want F32, BF16 or F16)", name, dt)
	}
	return def, def, nil
}
