package merge

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseConfig: any adapter_config.json either parses or is an error,
// never a panic, and a parsed config answers Rank and Scaling for any
// module name (the patterns are regular expressions from the file).
func FuzzParseConfig(f *testing.F) {
	for _, fam := range []string{"llama", "qwen2", "gpt2"} {
		b, err := os.ReadFile(filepath.Join(peftDir, fam+"-adapter", AdapterConfigName))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "model.layers.1.self_attn.q_proj")
	}
	f.Add([]byte(`{"peft_type": "LORA", "r": 4, "rank_pattern": {"(": 2}}`), "x")
	f.Add([]byte(`{"peft_type": "LORA", "r": 4, "alpha_pattern": {"a.*": 1e308}, "use_rslora": true}`), "a.b")
	f.Fuzz(func(t *testing.T, b []byte, module string) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		if c.PEFTType == "LORA" && c.R <= 0 {
			t.Fatalf("parsed LORA config with r = %d", c.R)
		}
		if r := c.Rank(module); c.PEFTType == "LORA" && r <= 0 {
			t.Fatalf("Rank(%q) = %d", module, r)
		}
		_ = c.Scaling(module)
	})
}
