package synth

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qconv/qconv/formats/dtype"
)

// LoRA returns the tensors of a PEFT LoRA adapter of rank r for every
// Linear weight of base (the 2-D ".weight" tensors other than embeddings
// and lm_head): for a weight [out, in], "base_model.model.<module>.lora_A.weight"
// F32 [r, in] and "....lora_B.weight" F32 [out, r], as PEFT saves them.
// It also returns the module names, for adapter_config.json.
func LoRA(base []Tensor, r int64) (ts []Tensor, modules []string) {
	for _, t := range base {
		module, ok := strings.CutSuffix(t.Name, ".weight")
		if !ok || len(t.Shape) != 2 || strings.Contains(module, "embed") || strings.HasSuffix(module, "lm_head") {
			continue
		}
		ts = append(ts,
			Tensor{Name: "base_model.model." + module + ".lora_A.weight", DType: dtype.F32, Shape: []int64{r, t.Shape[1]}},
			Tensor{Name: "base_model.model." + module + ".lora_B.weight", DType: dtype.F32, Shape: []int64{t.Shape[0], r}},
		)
		modules = append(modules, module)
	}
	return ts, modules
}

// WriteLoRA writes a PEFT LoRA adapter directory for base: rank r, alpha
// 2r, random nonzero factors (σ≈0.02, like the weights), the
// adapter_config.json fields that qconv merge reads.
func WriteLoRA(dir string, base []Tensor, r int64, seed uint64) error {
	ts, modules := LoRA(base, r)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	if err := WriteFile(filepath.Join(dir, "adapter_model.safetensors"), ts, seed); err != nil {
		return err
	}
	// target_modules as PEFT writes it for explicit module names.
	short := map[string]bool{}
	for _, m := range modules {
		short[m[strings.LastIndexByte(m, '.')+1:]] = true
	}
	var names []string
	for m := range short {
		names = append(names, fmt.Sprintf("%q", m))
	}
	cfg := fmt.Sprintf(`{
  "base_model_name_or_path": null,
  "bias": "none",
  "fan_in_fan_out": false,
  "lora_alpha": %d,
  "lora_dropout": 0.0,
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": %d,
  "target_modules": [%s],
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false
}
`, 2*r, r, strings.Join(names, ", "))
	return os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte(cfg), 0o666)
}
