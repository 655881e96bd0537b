package rules

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
	"github.com/qconv/qconv/formats/safetensors"
)

const goldenModels = "../../testdata/golden/models"

// TestGoldenModels audits the checkpoints that transformers itself wrote:
// the uint8-storage ones (and the unquantized sources) must be clean of
// errors and warnings; the float32-storage ones must get one BNB001 error
// per packed weight and the bfloat16-storage ones one BNB002 warning,
// and nothing else.
func TestGoldenModels(t *testing.T) {
	entries, err := os.ReadDir(goldenModels)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		t.Run(name, func(t *testing.T) {
			rep, err := audit.Run([]string{filepath.Join(goldenModels, name)}, audit.Options{Rules: All(), Deep: true})
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range rep.PathErrors {
				t.Fatal(e)
			}
			for _, d := range rep.Findings {
				t.Logf("%s %s %s: %s", d.Rule, d.Severity, d.Tensor, d.Message)
			}
			// The float-storage checkpoints must be flagged on every packed
			// weight, by the storage rule and nothing else.
			want := map[string]int{} // rule ID -> error/warning findings
			switch {
			case strings.HasSuffix(name, "-f32storage"):
				want["BNB001"] = packedWeights(t, filepath.Join(goldenModels, name))
			case strings.HasSuffix(name, "-bf16storage"):
				want["BNB002"] = packedWeights(t, filepath.Join(goldenModels, name))
			}
			got := map[string]int{}
			for _, d := range rep.Findings {
				if d.Severity >= audit.Warning {
					got[d.Rule]++
				}
			}
			if !maps.Equal(got, want) {
				t.Errorf("error and warning findings per rule: %v, want %v", got, want)
			}
		})
	}
}

// packedWeights counts the quant-state tensors of the checkpoint in dir,
// one per packed 4-bit weight.
func packedWeights(t *testing.T, dir string) int {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	for _, ti := range f.Tensors() {
		if strings.Contains(ti.Name, ".quant_state.bitsandbytes__") {
			n++
		}
	}
	if n == 0 {
		t.Fatalf("%s: no packed weights", dir)
	}
	return n
}
