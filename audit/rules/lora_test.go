package rules

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
)

const peftData = "../../testdata/peft"

// peftAdapter copies the reference adapter of fam (testdata/peft, made by
// PEFT 0.21) to dir, with base_model_name_or_path set to "org/<fam>-base"
// (which the base directories' names match) and then each old→new
// replacement applied to adapter_config.json.
func peftAdapter(fam string, edits ...string) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		src := filepath.Join(peftData, fam+"-adapter")
		cfg, err := os.ReadFile(filepath.Join(src, "adapter_config.json"))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.Replace(string(cfg), `"/tmp/peft/`+fam+`-base"`, `"org/`+fam+`-base"`, 1)
		for i := 0; i+1 < len(edits); i += 2 {
			if !strings.Contains(s, edits[i]) {
				t.Fatalf("adapter_config.json has no %q", edits[i])
			}
			s = strings.Replace(s, edits[i], edits[i+1], 1)
		}
		ad := filepath.Join(dir, "adapter")
		writeFile(t, filepath.Join(ad, "adapter_config.json"), []byte(s))
		w, err := os.ReadFile(filepath.Join(src, "adapter_model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(ad, "adapter_model.safetensors"), w)
		return ad
	}
}

// copyDir copies the files of src into a new directory under dir.
func copyDir(t *testing.T, src, dir string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(src))
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(out, e.Name()), b)
	}
	return out
}

type loraCase struct {
	rule, name string
	lookalike  bool
	adapter    func(t *testing.T, dir string) string
	base       string // "" audits without --base; "copy:FAM" uses a copy of FAM's base named after the adapter's own
	want       []string
}

var loraCases = []loraCase{
	{rule: "LORA001", name: "r-not-a-number", adapter: peftAdapter("llama", `"r": 8`, `"r": "eight"`), want: []string{"LORA001"}},
	{rule: "LORA001", name: "valid", lookalike: true, adapter: peftAdapter("llama")},
	{rule: "LORA002", name: "rank-mismatch", adapter: peftAdapter("llama", `"r": 8`, `"r": 16`), want: []string{"LORA002"}},
	{rule: "LORA002", name: "rank-pattern", lookalike: true, adapter: peftAdapter("llama", `"down_proj": 4,`, `"down_proj": 4, "no_such_module": 16,`)},
	{rule: "LORA003", name: "dora", adapter: peftAdapter("llama", `"use_dora": false`, `"use_dora": true`), want: []string{"LORA003"}},
	{rule: "LORA003", name: "dora-off", lookalike: true, adapter: peftAdapter("gpt2")},
	{rule: "LORA004", name: "lora-bias-without-bias", adapter: peftAdapter("qwen2"), base: "qwen2-base", want: slices.Repeat([]string{"LORA004"}, 8)},
	{rule: "LORA004", name: "other-base", adapter: peftAdapter("gpt2"), base: "llama-base", want: append(slices.Repeat([]string{"LORA004"}, 9), "LORA005", "LORA007")},
	{rule: "LORA004", name: "fits", lookalike: true, adapter: peftAdapter("llama"), base: "llama-base"},
	{rule: "LORA004", name: "fits-4bit", lookalike: true, adapter: peftAdapter("llama", `"org/llama-base"`, `"org/llama-base-nf4"`), base: "llama-base-nf4"},
	{rule: "LORA004", name: "no-base", lookalike: true, adapter: peftAdapter("qwen2")},
	{rule: "LORA005", name: "typo", adapter: peftAdapter("llama", `"q_proj"`, `"q_proj", "q-proj"`), base: "llama-base", want: []string{"LORA005"}},
	{rule: "LORA005", name: "suffix", lookalike: true, adapter: peftAdapter("llama", `"q_proj"`, `"self_attn.q_proj"`), base: "llama-base"},
	{rule: "LORA006", name: "other-local-base", adapter: nil, base: "llama-base", want: []string{"LORA006"}},
	{rule: "LORA006", name: "same-local-base", lookalike: true, adapter: nil, base: "llama-base"},
	{rule: "LORA007", name: "missing-path", adapter: peftAdapter("llama", `"org/llama-base"`, `"/nonexistent/llama-base"`), base: "llama-base", want: []string{"LORA007"}},
	{rule: "LORA007", name: "hub-id", lookalike: true, adapter: peftAdapter("llama", `"org/llama-base"`, `"meta/LLAMA-BASE"`), base: "llama-base"},
}

func init() {
	// LORA006: base_model_name_or_path is a local directory, a copy of
	// another model (gpt2's base) or of BASE itself.
	for i := range loraCases {
		c := &loraCases[i]
		if c.rule != "LORA006" {
			continue
		}
		other := "gpt2-base"
		if c.lookalike {
			other = "llama-base"
		}
		c.adapter = func(t *testing.T, dir string) string {
			bm := copyDir(t, filepath.Join(peftData, other), dir)
			return peftAdapter("llama", `"org/llama-base"`, `"`+bm+`"`)(t, dir)
		}
	}
}

func TestLoraRules(t *testing.T) {
	var ids []string
	for _, c := range loraCases {
		kind := "positive"
		if c.lookalike {
			kind = "lookalike"
		}
		ids = append(ids, c.rule)
		t.Run(c.rule+"/"+kind+"/"+c.name, func(t *testing.T) {
			path := c.adapter(t, t.TempDir())
			opts := audit.Options{Rules: All()}
			if c.base != "" {
				opts.Base = filepath.Join(peftData, c.base)
			}
			rep, err := audit.Run([]string{path}, opts)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var msgs strings.Builder
			for _, d := range rep.Findings {
				got = append(got, d.Rule)
				msgs.WriteString("\n  " + d.Rule + " " + d.File + ": " + d.Message)
				if d.Message == "" || d.File == "" {
					t.Errorf("finding %+v has no message or file", d)
				}
			}
			want := slices.Clone(c.want)
			sort.Strings(got)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Errorf("findings %q, want %q%s", got, want, msgs.String())
			}
		})
	}
	for _, r := range All() {
		if strings.HasPrefix(r.ID, "LORA") && !slices.Contains(ids, r.ID) {
			t.Errorf("%s has no test case", r.ID)
		}
	}
}
