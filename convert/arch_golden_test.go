package convert

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/formats/arch"
)

const archRefs = "../testdata/arch"

// TestArchReferences converts the source of every reference family in
// testdata/arch (tiny models that transformers 5.17 saved, and their 4-bit
// versions that transformers + bitsandbytes wrote) and compares every output
// file byte for byte; an architecture that transformers cannot quantize must
// be refused.
func TestArchReferences(t *testing.T) {
	dirs, err := filepath.Glob(filepath.Join(archRefs, "*--*"))
	if err != nil || len(dirs) < 40 {
		t.Fatalf("reference families: %d (%v)", len(dirs), err)
	}
	for _, d := range dirs {
		name := filepath.Base(d)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			class := name[strings.Index(name, "--")+2:]
			a := arch.Default().Arch(class)
			if a == nil {
				t.Fatalf("%s is not in the table", class)
			}
			dst := filepath.Join(t.TempDir(), "out")
			_, err := Convert(context.Background(), filepath.Join(d, "src"), dst, Options{Workers: 2})
			if a.Refuse != "" {
				if err == nil || !strings.Contains(err.Error(), a.Class) || !strings.Contains(err.Error(), "does not write") {
					t.Fatalf("want a refusal naming %s, got %v", a.Class, err)
				}
				if _, serr := os.Stat(dst); !os.IsNotExist(serr) {
					t.Fatalf("a refused conversion left %s", dst)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			compareDirs(t, dst, filepath.Join(d, "out"))
		})
	}
}

// TestArchUnknownWarns: an architecture the table does not know falls back
// to the name rules and says so.
func TestArchUnknownWarns(t *testing.T) {
	src := writeSynth(t, boundaryTensors()[:4], 1<<40, "")
	cfg := `{"architectures": ["NoSuchModelForCausalLM"], "model_type": "no_such_model", "dtype": "bfloat16"}`
	if err := os.WriteFile(filepath.Join(src, "config.json"), []byte(cfg), 0o666); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	_, sum := convertTo(t, src, Options{Log: &log})
	if len(sum.Plan.Warnings) != 1 || !strings.Contains(sum.Plan.Warnings[0], "NoSuchModelForCausalLM") ||
		!strings.Contains(log.String(), "warning: NoSuchModelForCausalLM") {
		t.Fatalf("warnings %q, log %q", sum.Plan.Warnings, log.String())
	}
	if sum.Plan.Arch != nil {
		t.Fatalf("unknown architecture resolved to %s", sum.Plan.Arch.Class)
	}
}
