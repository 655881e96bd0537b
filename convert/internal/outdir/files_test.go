package outdir

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
)

// TestCopyAux checks which files of a checkpoint directory are copied,
// reported as not copied (weights in other formats and their indexes),
// or silently left out (the checkpoint's own files, hidden ones).
func TestCopyAux(t *testing.T) {
	src := t.TempDir()
	plan, err := safetensors.NewPlan(nil, []safetensors.TensorSpec{{Name: "w", DType: dtype.F32, Shape: []int64{1}}})
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"model.safetensors":            string(plan.Header) + "\x00\x00\x00\x00",
		"config.json":                  "{}",
		"tokenizer.json":               "{}",
		"sub/chat_template.jinja":      "t",
		".cache/x":                     "x",
		".hidden":                      "x",
		"pytorch_model.bin":            "pickle",
		"pytorch_model.bin.index.json": "{}",
		"tf_model.h5.index.json":       "{}",
		"other.safetensors":            "x",
	}
	for name, body := range files {
		path := filepath.Join(src, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(path), 0o777)
		if err := os.WriteFile(path, []byte(body), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	ck, err := checkpoint.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	dst := filepath.Join(t.TempDir(), "work")
	d, err := CreateDir(dst, "test")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	copied, skipped, err := CopyAux(context.Background(), ck, d)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"sub/chat_template.jinja", "tokenizer.json"}; !slices.Equal(copied, want) {
		t.Errorf("copied %q, want %q", copied, want)
	}
	if want := []string{"other.safetensors", "pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5.index.json"}; !slices.Equal(skipped, want) {
		t.Errorf("not copied %q, want %q", skipped, want)
	}
	for _, name := range copied {
		if b, err := os.ReadFile(filepath.Join(dst, filepath.FromSlash(name))); err != nil || string(b) != files[name] {
			t.Errorf("%s: copy %q, %v", name, b, err)
		}
	}
}
