//go:build unix

package regular

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("data"), 0o666)
	link := filepath.Join(dir, "link")
	os.Symlink(file, link)
	for _, p := range []string{file, link} {
		f, fi, err := Open(p)
		if err != nil || fi.Size() != 4 {
			t.Fatalf("%s: %v", p, err)
		}
		b := make([]byte, 4)
		if n, err := f.Read(b); n != 4 || err != nil || string(b) != "data" {
			t.Errorf("%s: read %q, %v", p, b[:n], err)
		}
		f.Close()
	}
	if b, err := ReadFile(file, 3); err == nil {
		t.Errorf("limit 3: %q", b)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(dir, "fifolink")
	os.Symlink(fifo, fifoLink)
	bad := []string{dir, fifo, fifoLink, "/dev/zero", "/dev/null"}
	for _, p := range bad {
		done := make(chan error, 1)
		go func() { _, err := ReadFile(p, 1<<20); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotRegular) {
				t.Errorf("%s: %v, want not a regular file", p, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: blocked", p)
		}
	}
}
