package convert

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestAllocate: the file gets its final size, reads as zeros, and keeps
// what is then written into it.
func TestAllocate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 1<<20 + 3
	if _, err := allocate(f, size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("qconv"), size-5); err != nil {
		t.Fatal(err)
	}
	startWriteback(f, 0, size)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, size-5), "qconv"...)
	if !bytes.Equal(b, want) {
		t.Errorf("file of %d bytes, want %d zero bytes and then \"qconv\"", len(b), size-5)
	}
}
