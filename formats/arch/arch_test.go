package arch

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultParses(t *testing.T) {
	if _, err := Parse(tableJSON); err != nil {
		t.Fatalf("embedded table: %v", err)
	}
	tb := Default()
	if tb.Transformers == "" || tb.Bitsandbytes == "" {
		t.Fatalf("table names no versions: %q %q", tb.Transformers, tb.Bitsandbytes)
	}
	if tb.Len() < 300 {
		t.Fatalf("table knows %d architectures, want the ~370 transformers %s builds", tb.Len(), tb.Transformers)
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"model.layers.12.mlp.experts.3.w1.weight": "model.layers.*.mlp.experts.*.w1.weight",
		"lm_head.weight":         "lm_head.weight",
		"h.0.attn.c_attn.weight": "h.*.attn.c_attn.weight",
		"blocks.1a.x":            "blocks.1a.x",
		"x.":                     "x.",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseDecision(t *testing.T) {
	good := map[string]Decision{
		"q":                {Action: Quantize, Reason: ReasonLinear},
		"t":                {Action: QuantizeTransposed, Reason: ReasonConv1D},
		"k:router":         {Action: Keep, Reason: ReasonRouter},
		"k:keep_in_fp32":   {Action: Keep, Reason: ReasonKeepInFP32},
		"k:not_linear:F32": {Action: Keep, Reason: ReasonNotLinear, F32: true},
	}
	for s, want := range good {
		got, err := ParseDecision(s)
		if err != nil || got != want {
			t.Errorf("ParseDecision(%q) = %+v, %v; want %+v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "k", "k:", "x:y", "k:a:F16", "k:a:F32:x", "Q"} {
		if _, err := ParseDecision(s); err == nil {
			t.Errorf("ParseDecision(%q) accepted", s)
		}
	}
	if _, err := Parse([]byte(`{"architectures":{"A":{"tensors":{"x":"z"}}}}`)); err == nil {
		t.Error("Parse accepted a bad decision")
	}
	if _, err := Parse([]byte(`{`)); err == nil {
		t.Error("Parse accepted bad JSON")
	}
}

// The facts the architectures issue names, read from the table that
// transformers produced (not written into it by hand).
func TestKnownFacts(t *testing.T) {
	tb := Default()
	type c struct {
		class, tensor string
		action        Action
		reason        string
	}
	for _, tc := range []c{
		{"LlamaForCausalLM", "model.layers.31.self_attn.q_proj.weight", Quantize, ReasonLinear},
		{"LlamaForCausalLM", "lm_head.weight", Keep, ReasonOutputEmbedding},
		{"LlamaForCausalLM", "model.embed_tokens.weight", Keep, ReasonEmbedding},
		{"MixtralForCausalLM", "model.layers.7.block_sparse_moe.experts.5.w1.weight", Keep, ReasonExpert},
		{"MixtralForCausalLM", "model.layers.7.block_sparse_moe.gate.weight", Keep, ReasonRouter},
		{"MixtralForCausalLM", "model.layers.7.self_attn.o_proj.weight", Quantize, ReasonLinear},
		{"Qwen2MoeForCausalLM", "model.layers.3.mlp.experts.59.down_proj.weight", Keep, ReasonExpert},
		{"DeepseekV3ForCausalLM", "model.layers.0.mlp.gate_proj.weight", Quantize, ReasonLinear},
		{"DeepseekV3ForCausalLM", "model.layers.9.mlp.shared_experts.up_proj.weight", Quantize, ReasonLinear},
		{"GPT2LMHeadModel", "transformer.h.11.attn.c_attn.weight", QuantizeTransposed, ReasonConv1D},
		{"GPT2LMHeadModel", "transformer.wte.weight", Keep, ReasonEmbedding},
		{"T5ForConditionalGeneration", "encoder.block.5.layer.1.DenseReluDense.wo.weight", Keep, ReasonKeepInFP32},
		{"T5ForConditionalGeneration", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", Keep, ReasonEmbedding},
		{"Llama4ForCausalLM", "model.layers.1.feed_forward.router.weight", Keep, ReasonLinearSubclass},
	} {
		a := tb.Arch(tc.class)
		if a == nil {
			t.Errorf("%s: not in the table", tc.class)
			continue
		}
		d, ok := a.Decide(tc.tensor)
		if !ok || d.Action != tc.action || d.Reason != tc.reason {
			t.Errorf("%s %s: got %+v (known %v), want action %d reason %s", tc.class, tc.tensor, d, ok, tc.action, tc.reason)
		}
	}
	if f := tb.Arch("FalconForCausalLM"); f == nil || f.Refuse == "" || f.QuantizesAnything() {
		t.Errorf("Falcon: transformers %s quantizes none of its layers; table says %+v", tb.Transformers, f)
	}
	if g := tb.Arch("Qwen2VLForConditionalGeneration"); g == nil || strings.Join(g.SubconfigDType, ",") != "text_config,vision_config" {
		t.Errorf("Qwen2-VL sub-config dtypes: %+v", g)
	}
	if a := tb.Lookup(nil, "mixtral"); a == nil || a.Class != "MixtralForCausalLM" {
		t.Errorf("Lookup by model_type mixtral: %+v", a)
	}
	if a := tb.Lookup([]string{"NoSuchForCausalLM"}, "llama"); a != nil {
		t.Errorf("Lookup of an unknown class found %s", a.Class)
	}
}

func TestTailInference(t *testing.T) {
	tb, err := Parse([]byte(`{"architectures":{"A":{"model_type":"a","tensors":{
		"m.layers.*.attn.q.weight":"q",
		"m.layers.*.mlp.x.weight":"q",
		"m.blocks.*.mlp.x.weight":"k:expert",
		"m.layers.*.norm.weight":"k:norm"},
		"exact":{"m.layers.1.special.weight":"q"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	a := tb.Arch("A")
	if d, ok := a.Decide("m.deep.7.attn.q.weight"); !ok || d.Action != Quantize {
		t.Errorf("tail attn.q.weight: %+v %v", d, ok)
	}
	if _, ok := a.Decide("m.deep.7.mlp.x.weight"); ok {
		t.Error("an ambiguous tail decided")
	}
	if _, ok := a.Decide("m.other.weight"); ok {
		t.Error("an unknown name without an index decided")
	}
	if d, ok := a.Decide("m.layers.1.special.weight"); !ok || d.Action != Quantize {
		t.Errorf("exact: %+v %v", d, ok)
	}
}

// The table is what build_table.py makes of the committed generator
// records: nobody edits it by hand, and a regenerated record set needs a
// regenerated table.
func TestTableIsGenerated(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	root := filepath.Join("..", "..")
	out := filepath.Join(t.TempDir(), "table.json")
	cmd := exec.Command(py, filepath.Join(root, "scripts", "archgen", "build_table.py"), out,
		filepath.Join(root, "testdata", "arch", "arch-records.jsonl.gz"),
		filepath.Join(root, "testdata", "arch", "arch-records-wide.jsonl.gz"),
		filepath.Join(root, "testdata", "arch", "arch-records-deep.jsonl.gz"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build_table.py: %v\n%s", err, b)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, tableJSON) {
		t.Fatal("formats/arch/table.json is not what scripts/archgen/build_table.py makes of testdata/arch/arch-records*.jsonl.gz: regenerate it")
	}
}

// The reference checkpoints and the table must come from the same
// transformers: a regenerated reference set with a newer transformers and
// an old table is stale.
func TestReferencesMatchTableVersion(t *testing.T) {
	tb := Default()
	dirs, _ := filepath.Glob(filepath.Join("..", "..", "testdata", "arch", "*", "out", "config.json"))
	if len(dirs) < 40 {
		t.Fatalf("%d reference families in testdata/arch, want at least 40", len(dirs))
	}
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			Version string `json:"transformers_version"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if cfg.Version != tb.Transformers {
			t.Errorf("%s was written by transformers %s, the table comes from %s: stale", p, cfg.Version, tb.Transformers)
		}
	}
}

// BenchmarkLookup is what a command pays for the table at start-up: the
// table's layout, then one architecture's entry.
func BenchmarkLookup(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		tb, err := parseLazy(tableJSON)
		if err != nil {
			b.Fatal(err)
		}
		if tb.Lookup([]string{"LlamaForCausalLM"}, "llama") == nil {
			b.Fatal("no llama")
		}
	}
}

func BenchmarkParseAll(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(tableJSON); err != nil {
			b.Fatal(err)
		}
	}
}
