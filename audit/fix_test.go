package audit_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/audit/rules"
)

const models = "../testdata/golden/models"

// TestFixGolden repairs the float-storage checkpoints that transformers
// wrote and compares the result byte for byte with the uint8-storage
// checkpoint transformers wrote from the same weights.
func TestFixGolden(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"tiny-llama-bf16-nf4-dq-f32storage", "tiny-llama-bf16-nf4-dq-u8"},
		{"tiny-llama-b-f32-nf4-dq-f32storage", "tiny-llama-b-f32-nf4-dq-u8"},
		{"tiny-llama-bf16-nf4-dq-bf16storage", "tiny-llama-bf16-nf4-dq-u8"},
		{"tiny-llama-b-f32-nf4-dq-bf16storage", "tiny-llama-b-f32-nf4-dq-u8"},
	} {
		t.Run(tc.src, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "fixed")
			res, err := audit.Fix(dst, filepath.Join(models, tc.src))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Retyped) != 14 || res.ConfigReformatted || res.ConfigStorage == "" {
				t.Errorf("result %+v: want 14 retyped weights and a config edited in place", res)
			}
			for _, name := range []string{"model.safetensors", "config.json", "generation_config.json"} {
				got, err := os.ReadFile(filepath.Join(dst, name))
				if err != nil {
					t.Fatal(err)
				}
				want, err := os.ReadFile(filepath.Join(models, tc.want, name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from %s/%s (%d vs %d bytes)", name, tc.want, name, len(got), len(want))
				}
			}
			rep, err := audit.Run([]string{dst}, audit.Options{Rules: rules.All(), Deep: true})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Counts.AtLeast(audit.Warning) != 0 {
				t.Errorf("fixed checkpoint has findings: %+v", rep.Findings)
			}
		})
	}
}

func TestFixRefuses(t *testing.T) {
	src := filepath.Join(models, "tiny-llama-bf16-nf4-dq-f32storage")
	existing := t.TempDir()
	if _, err := audit.Fix(existing, src); err == nil {
		t.Error("Fix wrote into an existing directory")
	}
	dst := filepath.Join(t.TempDir(), "out")
	if _, err := audit.Fix(dst, filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8")); !errors.Is(err, audit.ErrNothingToFix) {
		t.Errorf("Fix of a correct checkpoint: %v, want ErrNothingToFix", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("Fix with nothing to do created %s", dst)
	}
	// A single file: the packed weights are repaired, no config is read.
	if _, err := audit.Fix(dst, filepath.Join(src, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dst, "model.safetensors"))
	want, _ := os.ReadFile(filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8", "model.safetensors"))
	if !bytes.Equal(got, want) {
		t.Error("fixed single file differs from the uint8 golden file")
	}
	entries, _ := os.ReadDir(filepath.Dir(dst))
	if len(entries) != 1 {
		t.Errorf("temporary files left beside the output: %v", entries)
	}
}
