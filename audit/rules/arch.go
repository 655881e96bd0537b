package rules

import (
	"fmt"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/arch"
	"github.com/qconv/qconv/internal/pyjson"
)

// archView is what the ARCH rules know about a checkpoint's architecture:
// its entry in formats/arch's table (transformers' own decisions) and the
// llm_int8_skip_modules of its quantization_config.
type archView struct {
	a            *arch.Arch
	table        *arch.Table
	classes      []string
	modelType    string
	skip         *arch.SkipList // llm_int8_skip_modules
	explicitSkip bool           // llm_int8_skip_modules is a list, not null
}

// checkpointArch returns the architecture view of a 4-bit checkpoint with a
// readable config.json; ok is false for anything else (a dense checkpoint,
// a file argument, no or a broken config.json), which the ARCH rules do
// not judge. v.a is nil when the table does not know the architecture.
func checkpointArch(c *audit.Checkpoint) (v archView, ok bool) {
	if c.Config == nil || c.Config.Value == nil || !c.IsQuantized() {
		return v, false
	}
	v.table = arch.Default()
	v.classes, v.modelType = arch.ConfigNames(c.Config.Value)
	v.a = tableArch(c)
	if s := c.Config.Quantization().Get("llm_int8_skip_modules"); s.Kind() == pyjson.KindArray {
		v.explicitSkip = true
		var patterns []string
		for _, p := range s.Items() {
			if str, isStr := p.AsString(); isStr {
				patterns = append(patterns, str)
			}
		}
		v.skip = arch.NewSkipList(patterns)
	}
	return v, true
}

// tableArch returns formats/arch's entry for the architecture that the
// checkpoint's config.json names, or nil (no readable config.json, or an
// architecture the table does not know).
func tableArch(c *audit.Checkpoint) *arch.Arch {
	if c.Config == nil || c.Config.Value == nil {
		return nil
	}
	return arch.Default().LookupConfig(c.Config.Value)
}

// quantizable reports whether transformers, loading this checkpoint with
// its quantization_config, builds a Linear4bit for the module of tensor,
// given the table's decision d: a Linear the table quantizes, or one kept
// only by transformers' default skips (which an explicit
// llm_int8_skip_modules replaces), unless llm_int8_skip_modules names it.
func (v archView) quantizable(tensor string, d arch.Decision) bool {
	if v.explicitSkip && v.skip.Skips(arch.Module(tensor)) {
		return false
	}
	return d.Quantized() || (v.explicitSkip && d.DefaultSkip())
}

// transformersName is "transformers 5.17.0", the source of the table.
func (v archView) transformersName() string { return "transformers " + v.table.Transformers }

// reasonText says in words why transformers keeps a tensor dense, for a
// decision's Reason.
func reasonText(reason string) string {
	switch reason {
	case arch.ReasonOutputEmbedding:
		return "it is the output embedding, which transformers keeps dense unless llm_int8_skip_modules is an explicit list"
	case arch.ReasonTiedEmbedding:
		return "it is tied to the input embedding"
	case arch.ReasonKeepInFP32:
		return "its module is in the model's _keep_in_fp32_modules"
	case arch.ReasonNotConverted:
		return "its module is among transformers' default modules_to_not_convert"
	case arch.ReasonExpert:
		return "it is a mixture-of-experts expert, which transformers fuses into a 3-D parameter that bitsandbytes does not quantize"
	case arch.ReasonRouter:
		return "it is a mixture-of-experts router, not an nn.Linear"
	case arch.ReasonEmbedding:
		return "it is an nn.Embedding"
	case arch.ReasonNorm:
		return "it is a normalization layer's parameter"
	case arch.ReasonLinearSubclass:
		return "its module is a subclass of nn.Linear, and transformers converts exact nn.Linear only"
	case arch.ReasonNotLinear, arch.ReasonUnknownModule:
		return "it is not the weight of an nn.Linear"
	case arch.ReasonNot2D:
		return "it is not a matrix"
	case arch.ReasonBias:
		return "it is a bias"
	case arch.ReasonNotWeight:
		return "it is not a Linear's weight"
	case arch.ReasonNotFloat:
		return "it is not a floating-point tensor"
	case arch.ReasonFusedOnLoad:
		return "transformers merges it into another parameter when it loads the model"
	}
	return fmt.Sprintf("transformers keeps it dense (%s)", reason)
}
