package dequant

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert/internal/outdir"
)

// TestStaleTempDirs: a dequant that was killed leaves its temporary
// directory (with a full-size output file) beside DST; the next run
// removes it. A temporary directory of a run still going (locked) and
// anything at such a name that qconv did not make are left alone.
func TestStaleTempDirs(t *testing.T) {
	base := t.TempDir()
	dst := filepath.Join(base, "out")
	stale, err := outdir.MkTemp(dst, workKind)
	if err != nil {
		t.Fatal(err)
	}
	f, err := stale.Create("model.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(1 << 20)
	f.Close()
	stale.Close() // the run is gone: its lock with it
	busy, err := outdir.MkTemp(dst, workKind)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	foreign := filepath.Join(base, ".out"+outdir.TempInfix+"planted")
	os.Mkdir(foreign, 0o700)
	if _, err := Dequantize(context.Background(), model("tiny-llama-bf16-nf4-dq-u8"), dst, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale.Path()); !os.IsNotExist(err) {
		t.Errorf("stale %s not removed", stale.Path())
	}
	for _, keep := range []string{busy.Path(), foreign} {
		if _, err := os.Stat(keep); err != nil {
			t.Errorf("%s removed", keep)
		}
	}
	ents, _ := os.ReadDir(base)
	n := 0
	for _, e := range ents {
		if strings.Contains(e.Name(), outdir.TempInfix) {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d temporary directories beside DST, want 2 (busy, planted)", n)
	}
}

// TestSymlinkDst: dequant refuses a destination that is a symbolic link.
func TestSymlinkDst(t *testing.T) {
	base := t.TempDir()
	to := filepath.Join(base, "target")
	os.Mkdir(to, 0o777)
	dst := filepath.Join(base, "out")
	os.Symlink(to, dst)
	for _, force := range []bool{false, true} {
		if _, err := Dequantize(context.Background(), model("tiny-llama-bf16-nf4-dq-u8"), dst, Options{Force: force}); err == nil || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("--force=%v: %v", force, err)
		}
	}
	if ents, _ := os.ReadDir(to); len(ents) != 0 {
		t.Error("wrote through the link")
	}
}
