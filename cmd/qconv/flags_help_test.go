package main

import (
	"strings"
	"testing"
)

// Command help lists flags the way the usage texts and users write them.
func TestHelpFlagSpelling(t *testing.T) {
	code, stdout, stderr := qconv("convert", "--help")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"\n  --blocksize int\n", "\n  -j int\n", "\n  --double-quant\n", `(default "nf4")`, "(default 64)"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("convert --help lacks %q", want)
		}
	}
	if strings.Contains(stdout, "\n  -blocksize") {
		t.Error("convert --help spells a long flag with one dash")
	}
}
