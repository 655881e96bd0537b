package convert

import (
	"fmt"
	"path"
	"strings"

	"github.com/qconv/qconv/formats/dtype"
)

// Which tensors are quantized.
//
// transformers replaces every nn.Linear of a causal LM by bnb's Linear4bit
// except the output embedding (lm_head, or the module tied to the input
// embedding) and the model's _keep_in_fp32_modules; embeddings, norms,
// biases and buffers stay in the model dtype. A checkpoint does not say
// which module is a Linear, so qconv decides by name and shape. By
// default a tensor is quantized if and only if
//
//   - its dtype is F32, BF16 or F16,
//   - it is 2-D with at least one element,
//   - its name ends in ".weight" (biases, norms' "bias", buffers and
//     parameters such as Mamba's A_log are kept), and
//   - its module (the name without ".weight") is not an output or input
//     embedding: the module's last component is not "lm_head" or
//     "embed_out" (GPT-NeoX), does not contain "embed" (embed_tokens,
//     word_embeddings, position_embeddings, embed_positions, ...), is not
//     "wte", "wpe" (GPT-2) or "shared" (T5), and is not a norm (contains
//     "norm", or is "ln" or starts with "ln_"; norms are 1-D anyway).
//
// This matches transformers on Llama, Mistral, Qwen, Gemma, Phi, OPT, GPT-J,
// GPT-NeoX, Falcon, BLOOM and the golden models. Checkpoints that keep
// per-expert 2-D MoE weights or GPT-2 Conv1D layers (stored transposed)
// need care: see the package documentation.
//
// Skip globs keep matching tensors dense; include globs force quantization
// of matching floating-point tensors of any shape; skip wins. When the
// resulting selection differs from the default one, config.json lists the
// kept Linear-like modules in llm_int8_skip_modules (full module names, which
// both transformers v4's substring rule and v5's prefix rule honour), so
// that transformers loads them as dense Linear layers.

// selector decides which tensors are quantized.
type selector struct {
	skip, include []string
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

// isEmbeddingOrNorm reports whether module is an input embedding or a
// norm, judged by its last component.
func isEmbeddingOrNorm(module string) bool {
	last := strings.ToLower(lastComponent(module))
	switch {
	case strings.Contains(last, "embed"), last == "wte", last == "wpe", last == "shared":
		return true
	case strings.Contains(last, "norm"), last == "ln", strings.HasPrefix(last, "ln_"):
		return true
	}
	return false
}

// quantizable reports whether d is a dtype qconv can quantize from.
func quantizable(d dtype.DType) bool { return modelDType(d) }

// byDefault reports whether transformers would quantize the tensor.
func byDefault(name string, dt dtype.DType, shape []int64) bool {
	if !quantizable(dt) || len(shape) != 2 || shape[0] == 0 || shape[1] == 0 {
		return false
	}
	if lastComponent(name) != "weight" {
		return false
	}
	m := moduleName(name)
	return !isOutputEmbedding(m) && !isEmbeddingOrNorm(m)
}

// linearLike reports whether the tensor looks like a Linear weight that
// transformers would turn into Linear4bit unless told to skip it: a 2-D
// floating ".weight" that is not an input embedding or norm.
func linearLike(name string, dt dtype.DType, shape []int64) bool {
	return dt.IsFloat() && len(shape) == 2 && lastComponent(name) == "weight" &&
		!isEmbeddingOrNorm(moduleName(name))
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

// quantize reports whether the tensor is quantized, and an error if it is
// selected but cannot be (an --include of a non-float tensor is ignored,
// not an error: include globs apply to floating-point tensors only).
func (s selector) quantize(name string, dt dtype.DType, shape []int64) (bool, error) {
	if globMatch(s.skip, name) {
		return false, nil
	}
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	if globMatch(s.include, name) && dt.IsFloat() && n > 0 {
		if !quantizable(dt) {
			return false, fmt.Errorf("convert: tensor %q: cannot quantize dtype %v (want F32, BF16 or F16)", name, dt)
		}
		return true, nil
	}
	if !quantizable(dt) && byDefault(name, dtype.F32, shape) {
		// A Linear weight in another dtype: F64, FP8, or the integer
		// storage of another quantization format.
		return false, fmt.Errorf("convert: tensor %q: unsupported dtype %v for a weight to quantize (want F32, BF16 or F16)", name, dt)
	}
	return byDefault(name, dt, shape), nil
}
