package rules

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/audit"
)

const goldenModels = "../../testdata/golden/models"

// TestGoldenModels audits the checkpoints that transformers itself wrote:
// the uint8-storage ones (and the unquantized sources) must be clean of
// errors and warnings; the float32-storage ones must be errors.
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
			switch {
			case strings.HasSuffix(name, "-f32storage"):
				if rep.Counts.Error == 0 {
					t.Errorf("no errors for a float32-storage checkpoint")
				}
			case strings.HasSuffix(name, "-bf16storage"):
				if rep.Counts.Error != 0 || rep.Counts.Warning == 0 {
					t.Errorf("counts %+v, want warnings and no errors", rep.Counts)
				}
			default:
				if rep.Counts.Error+rep.Counts.Warning != 0 {
					t.Errorf("counts %+v, want no errors or warnings", rep.Counts)
				}
			}
		})
	}
}
