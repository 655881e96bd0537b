package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestCommitReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.safetensors")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	if base := filepath.Base(f.Name()); !strings.HasPrefix(base, ".out.safetensors.tmp-") || filepath.Dir(f.Name()) != dir {
		t.Fatalf("temp name %q", f.Name())
	}
	if _, err := f.WriteAt([]byte("world"), 6); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("hello "), 0); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Fatalf("target changed before Commit: %q", b)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "hello world" {
		t.Fatalf("after Commit: %q", b)
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Fatalf("leftover files: %v", names)
	}
	if err := f.Abort(); err != nil {
		t.Fatalf("Abort after Commit: %v", err)
	}
	if err := f.Commit(); err == nil {
		t.Fatal("second Commit succeeded")
	}
	if b, _ := os.ReadFile(path); string(b) != "hello world" {
		t.Fatalf("Abort after Commit changed the file: %q", b)
	}
}

func TestAbortLeavesTarget(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("new")
	if err := f.Abort(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Fatalf("after Abort: %q", b)
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Fatalf("leftover files: %v", names)
	}
	if err := f.Commit(); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
}

func TestCommitFailureCleansUp(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub")
	f, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Make the rename fail: the target is a non-empty directory.
	if err := os.MkdirAll(filepath.Join(path, "child"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err == nil || !strings.HasPrefix(err.Error(), "atomicfile: ") {
		t.Fatalf("Commit over a directory: %v", err)
	}
	if names := dirNames(t, dir); len(names) != 1 || names[0] != "sub" {
		t.Fatalf("leftover files: %v", names)
	}
}

func TestCreateErrors(t *testing.T) {
	if _, err := Create(filepath.Join(t.TempDir(), "missing", "x")); err == nil {
		t.Fatal("Create in a missing directory succeeded")
	}
	if _, err := Create(t.TempDir() + "/"); err == nil {
		t.Fatal("Create of a directory path succeeded")
	}
}
