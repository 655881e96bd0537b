package arch

import (
	"testing"

	"github.com/qconv/qconv/internal/pyjson"
)

func TestConfigNames(t *testing.T) {
	cfg, err := pyjson.Parse([]byte(`{"architectures": ["MixtralForCausalLM", 3, "X"], "model_type": "mixtral"}`))
	if err != nil {
		t.Fatal(err)
	}
	cls, mt := ConfigNames(cfg)
	if len(cls) != 2 || cls[0] != "MixtralForCausalLM" || cls[1] != "X" || mt != "mixtral" {
		t.Errorf("ConfigNames = %q, %q", cls, mt)
	}
	if a := Default().LookupConfig(cfg); a == nil || a.Class != "MixtralForCausalLM" || a.String() != `MixtralForCausalLM (model_type "mixtral")` {
		t.Errorf("LookupConfig = %v", a)
	}
	if a := Default().LookupConfig(nil); a != nil {
		t.Errorf("LookupConfig(nil) = %v", a)
	}
	bad, _ := pyjson.Parse([]byte(`{"architectures": "LlamaForCausalLM", "model_type": 7}`))
	if cls, mt := ConfigNames(bad); cls != nil || mt != "" {
		t.Errorf("ConfigNames of wrong types = %q, %q", cls, mt)
	}
}

// The cases of transformers 5.17's should_convert_module docstring, and
// the corners of Python's re.match.
func TestSkipsModule(t *testing.T) {
	for _, tc := range []struct {
		module   string
		patterns []string
		want     bool
	}{
		{"model.decoder.layer.11.attn", []string{"model.decoder.layer.11"}, true}, // prefix + dot
		{"lm_head", []string{"lm_head"}, true},                                    // exact
		{"model.decoder.layer.11.attn", []string{"model.decoder.layer.*"}, true},  // regex
		{"model.decoder.layers.23.fc1", []string{"fc1"}, true},                    // suffix
		{"model.layers.0.mlp.down_proj", []string{"mlp.down_proj"}, true},         // suffix
		{"model.layers.0.mlp.down_proj", []string{"up_proj"}, false},
		{"model.layers.0.mlp.down_proj", []string{"layers"}, false}, // neither prefix nor suffix
		{"model.layers.0.mlp.down_proj", nil, false},
		{"model.layers.0.mlp.down_proj", []string{"lm_head|model"}, true}, // re.match anchors every alternative
		{"model.layers.0.mlp.down_proj", []string{"(?<=x)model"}, false},  // Python-only syntax: literal prefix
		{"(?<=x)model.a", []string{"(?<=x)model"}, true},
		{"lm_head_2", []string{"lm_head"}, true}, // re.match is a prefix match
	} {
		if got := NewSkipList(tc.patterns).Skips(tc.module); got != tc.want {
			t.Errorf("NewSkipList(%q).Skips(%q) = %v, want %v", tc.patterns, tc.module, got, tc.want)
		}
	}
}

func TestSkipListZero(t *testing.T) {
	var nilList *SkipList
	if nilList.Skips("lm_head") || (&SkipList{}).Skips("lm_head") {
		t.Error("an empty skip list skips")
	}
}

func TestDefaultSkip(t *testing.T) {
	for s, want := range map[string]bool{
		"k:output_embedding": true, "k:not_converted": true, "k:tied_embedding": true,
		"k:keep_in_fp32": false, "k:expert": false, "q": false, "t": false,
	} {
		d, err := ParseDecision(s)
		if err != nil {
			t.Fatal(err)
		}
		if d.DefaultSkip() != want {
			t.Errorf("%s: DefaultSkip = %v", s, !want)
		}
	}
	if Module("a.b.weight") != "a.b" || Module("weight") != "" {
		t.Error("Module")
	}
}
