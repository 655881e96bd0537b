package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuditChangedFiles runs audit --changed-files as the pre-commit hook
// does (.pre-commit-hooks.yaml): files in, one audit per checkpoint
// directory out, with the output of auditing that directory.
func TestAuditChangedFiles(t *testing.T) {
	f32 := filepath.Join(models, "tiny-llama-bf16-nf4-dq-f32storage")
	u8 := filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8")
	_, wantOut, wantErr := qconv("audit", f32)

	code, out, errOut := qconv("audit", "--changed-files",
		filepath.Join(f32, "model.safetensors"), filepath.Join(f32, "config.json"),
		filepath.Join(u8, "config.json"), filepath.Join(u8, "generation_config.json"))
	if code != exitFindings {
		t.Errorf("float32 storage + uint8 model: exit %d, want %d", code, exitFindings)
	}
	if out != wantOut || errOut != wantErr {
		t.Errorf("output differs from qconv audit %s:\n%s%s\nwant:\n%s%s", f32, out, errOut, wantOut, wantErr)
	}
	if n := strings.Count(out, "BNB001"); n != 14 {
		t.Errorf("%d BNB001 findings, want 14 (one per packed weight)", n)
	}

	if code, out, errOut := qconv("audit", "--changed-files", filepath.Join(u8, "model.safetensors")); code != exitOK {
		t.Errorf("uint8 model: exit %d\n%s%s", code, out, errOut)
	}
	// Only files that are no checkpoint's (another tool's config.json):
	// nothing to audit, success.
	other := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(other, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := qconv("audit", "--changed-files", filepath.Join(u8, "generation_config.json"), other); code != exitOK || out != "" {
		t.Errorf("no checkpoint file: exit %d\n%s%s", code, out, errOut)
	}
	if code, _, _ := qconv("audit", "--changed-files", "--fix", t.TempDir(), f32); code != exitError {
		t.Errorf("--changed-files with --fix: exit %d, want %d", code, exitError)
	}
}
