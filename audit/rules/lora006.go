package rules

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/convert/merge"
	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/internal/pyjson"
)

// identityKeys are the config.json keys that tell two models apart
// without comparing weights (a copy of a model in another dtype or
// quantized still agrees on all of them).
var identityKeys = []string{"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "n_embd", "n_layer", "n_head"}

// baseIdentity compares the adapter's base_model_name_or_path with BASE.
// It returns a definite mismatch (LORA006), or a reason the match cannot
// be checked (LORA007), or neither.
func baseIdentity(cfg *merge.Config, base *checkpoint.Checkpoint) (mismatch, unknown string) {
	bm := cfg.BaseModel
	if bm == "" {
		return "", ""
	}
	baseDir := base.Dir
	if fi, err := os.Stat(bm); err == nil && fi.IsDir() {
		if bfi, err := os.Stat(baseDir); err == nil && os.SameFile(fi, bfi) {
			return "", ""
		}
		other, err := checkpoint.Open(bm)
		if err != nil || other.Config == nil || base.Config == nil {
			if other != nil {
				other.Close()
			}
			return "", fmt.Sprintf("base_model_name_or_path %s is a directory whose config.json cannot be compared with %s's", bm, base.Path)
		}
		defer other.Close()
		if d := configDiff(other.Config, base.Config); d != "" {
			return fmt.Sprintf("the adapter was trained on %s, whose config.json differs from %s's (%s)", bm, base.Path, d), ""
		}
		return "", ""
	}
	if filepath.IsAbs(bm) || strings.HasPrefix(bm, ".") {
		return "", fmt.Sprintf("base_model_name_or_path %s does not exist here, so qconv cannot check that %s is that model", bm, base.Path)
	}
	// A Hub ID ("org/name").
	if np, ok := base.Config.Get("_name_or_path").AsString(); ok && np != "" {
		if np == bm || strings.EqualFold(lastElem(np), lastElem(bm)) {
			return "", ""
		}
		return fmt.Sprintf("the adapter was trained on %s, but %s's config.json says it is %s", bm, base.Path, np), ""
	}
	if strings.EqualFold(lastElem(filepath.Clean(base.Dir)), lastElem(bm)) {
		return "", ""
	}
	return "", fmt.Sprintf("the adapter was trained on %s; %s does not say which model it is (no _name_or_path in config.json, another directory name), so qconv cannot check", bm, base.Path)
}

func lastElem(s string) string {
	s = strings.TrimRight(s, "/")
	return s[strings.LastIndexByte(s, '/')+1:]
}

// configDiff lists the identity keys on which two configs differ.
func configDiff(a, b *pyjson.Value) string {
	var ds []string
	for _, k := range identityKeys {
		x, y := a.Get(k), b.Get(k)
		if x.IsNull() && y.IsNull() {
			continue
		}
		if x.IsNull() || y.IsNull() || string(x.MarshalCompact()) != string(y.MarshalCompact()) {
			ds = append(ds, fmt.Sprintf("%s %s vs %s", k, lit(x), lit(y)))
		}
	}
	return strings.Join(ds, ", ")
}

func lit(v *pyjson.Value) string {
	if v.IsNull() {
		return "absent"
	}
	return string(v.MarshalCompact())
}

func lora006() *audit.Rule {
	return &audit.Rule{
		ID:       "LORA006",
		Title:    "adapter trained on another base model",
		Severity: audit.Warning,
		Doc: `Checked only with --base BASE. adapter_config.json's
base_model_name_or_path names a model that BASE is not: a local directory
whose config.json differs from BASE's in the architecture (model_type,
sizes, layer and head counts), or a Hub ID other than the _name_or_path in
BASE's config.json. An adapter applied to another base (even one of the
same shapes, such as another fine-tune of the same architecture) loads and
merges without an error, but the result is not the trained model.

Fix: merge into the model named by base_model_name_or_path, or, if BASE is
that model under another name, ignore the finding (--disable LORA006).`,
		Run: func(p *audit.Pass) {
			withAdapterAndBase(p, func(a *merge.Adapter, base *checkpoint.Checkpoint) {
				if mm, _ := baseIdentity(a.Config, base); mm != "" {
					p.Reportf(loraDir(p.Checkpoint)+"/"+merge.AdapterConfigName, "", "%s; merge into the model the adapter was trained on", mm)
				}
			})
		},
	}
}
