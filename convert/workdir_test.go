package convert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qconv/qconv/convert/internal/outdir"
)

// victim makes a file that a planted link points to, and returns a check
// that it was left alone.
func victim(t *testing.T) (string, func()) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(path, []byte("precious"), 0o666); err != nil {
		t.Fatal(err)
	}
	return path, func() {
		t.Helper()
		if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
			t.Errorf("victim file changed: %q, %v", b, err)
		}
	}
}

// mustFail runs Convert and checks that it fails with an error containing
// want, leaving no dst.
func mustFail(t *testing.T, src, dst string, o Options, want string) {
	t.Helper()
	_, err := Convert(context.Background(), src, dst, o)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one containing %q", err, want)
	}
	if fi, err := os.Lstat(dst); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		if ents, _ := os.ReadDir(dst); len(ents) > 0 {
			t.Errorf("%s was written", dst)
		}
	}
}

// TestPlantedWorkDir follows the recipes of issue 14: a work directory
// planted beside DST by someone else (a directory of symbolic links, a
// symbolic link to another directory, one owned by another user or
// writable by others, forged finished files) is refused and never written
// through.
func TestPlantedWorkDir(t *testing.T) {
	src := filepath.Join(goldenModels, "tiny-llama-bf16")

	t.Run("link inside", func(t *testing.T) {
		// mkdir -p t/.out.qconv-partial
		// ln -s /some/victim t/.out.qconv-partial/model.safetensors
		dst := filepath.Join(t.TempDir(), "out")
		work, _ := workDirFor(dst)
		os.MkdirAll(work, 0o700)
		v, unchanged := victim(t)
		if err := os.Symlink(v, filepath.Join(work, "model.safetensors")); err != nil {
			t.Fatal(err)
		}
		mustFail(t, src, dst, Options{}, "no marker file")
		mustFail(t, src, dst, Options{Restart: true}, "no marker file")
		unchanged()
		if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s created", dst)
		}
	})

	t.Run("linked work dir", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "out")
		work, _ := workDirFor(dst)
		other := t.TempDir()
		if err := os.Symlink(other, work); err != nil {
			t.Fatal(err)
		}
		mustFail(t, src, dst, Options{}, "is a symbolic link")
		if ents, _ := os.ReadDir(other); len(ents) != 0 {
			t.Errorf("wrote %d files into the directory the link points to", len(ents))
		}
	})

	t.Run("writable by others", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "out")
		if _, err := Convert(context.Background(), src, dst, Options{Part: Part{Index: 0, Count: 2}}); err != nil {
			t.Fatal(err)
		}
		work, _ := workDirFor(dst)
		os.Chmod(work, 0o777)
		mustFail(t, src, dst, Options{}, "writable by others")
	})

	t.Run("other owner", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to give a directory to another user")
		}
		dst := filepath.Join(t.TempDir(), "out")
		if _, err := Convert(context.Background(), src, dst, Options{Part: Part{Index: 0, Count: 2}}); err != nil {
			t.Fatal(err)
		}
		work, _ := workDirFor(dst)
		if err := os.Chown(work, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		mustFail(t, src, dst, Options{}, "owned by another user")
	})

	t.Run("forged marker kind", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "out")
		work, _ := workDirFor(dst)
		d, err := outdir.CreateDir(work, "dequant")
		if err != nil {
			t.Fatal(err)
		}
		d.Close()
		mustFail(t, src, dst, Options{}, "not a convert one")
	})

	t.Run("forged done", func(t *testing.T) {
		// A work directory of our own in which a finished file was
		// replaced by other bytes with a done marker whose size and CRC
		// match them (but that this work directory did not write).
		o := shardedOpts
		ref := referenceOutput(t, src, o)
		dst := filepath.Join(t.TempDir(), "out")
		o.Part = Part{Index: 0, Count: 1 << 10}
		if _, err := Convert(context.Background(), src, dst, o); err != nil {
			t.Fatal(err)
		}
		work, _ := workDirFor(dst)
		name := "model-00001-of-00005.safetensors"
		done := filepath.Join(work, "."+name+doneSuffix)
		b, err := os.ReadFile(done)
		if err != nil {
			t.Fatal(err)
		}
		var d doneState
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		forged := bytes.Clone(ref[name])
		forged[len(forged)-1] ^= 0x55
		os.WriteFile(filepath.Join(work, name), forged, 0o666)
		d.Size, d.CRC32C, d.Dir = int64(len(forged)), crc32.Checksum(forged, castagnoli), "forged"
		b, _ = json.Marshal(d)
		os.WriteFile(done, b, 0o666)
		var log bytes.Buffer
		o = shardedOpts
		o.Log = &log
		if _, err := Convert(context.Background(), src, dst, o); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(log.String(), name+" is already complete") {
			t.Errorf("forged %s kept", name)
		}
		sameFiles(t, readDir(t, dst), ref, "the one-process output")
	})

	t.Run("link planted in own work dir", func(t *testing.T) {
		// Our own work directory with a finished part; the user (the only
		// one who can write there) leaves a link at an unfinished name.
		o := shardedOpts
		ref := referenceOutput(t, src, o)
		dst := filepath.Join(t.TempDir(), "out")
		o.Part = Part{Index: 0, Count: 1 << 10}
		if _, err := Convert(context.Background(), src, dst, o); err != nil {
			t.Fatal(err)
		}
		work, _ := workDirFor(dst)
		v, unchanged := victim(t)
		if err := os.Symlink(v, filepath.Join(work, "model-00002-of-00005.safetensors")); err != nil {
			t.Fatal(err)
		}
		if _, err := Convert(context.Background(), src, dst, shardedOpts); err != nil {
			t.Fatal(err)
		}
		unchanged()
		sameFiles(t, readDir(t, dst), ref, "the one-process output")
		if fi, err := os.Lstat(filepath.Join(dst, "model-00002-of-00005.safetensors")); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("output is not a regular file: %v", err)
		}
	})
}

// TestSymlinkDst: a destination that is a symbolic link is refused, with
// and without --force, and what it points to is left alone.
func TestSymlinkDst(t *testing.T) {
	src := filepath.Join(goldenModels, "tiny-llama-bf16")
	for _, target := range []string{"empty", "full", "missing"} {
		t.Run(target, func(t *testing.T) {
			base := t.TempDir()
			to := filepath.Join(base, "target")
			switch target {
			case "empty":
				os.Mkdir(to, 0o777)
			case "full":
				os.Mkdir(to, 0o777)
				os.WriteFile(filepath.Join(to, "model.safetensors"), []byte("old"), 0o666)
			}
			dst := filepath.Join(base, "out")
			if err := os.Symlink(to, dst); err != nil {
				t.Fatal(err)
			}
			for _, force := range []bool{false, true} {
				mustFail(t, src, dst, Options{Force: force}, "is a symbolic link")
				if fi, err := os.Lstat(dst); err != nil || fi.Mode()&os.ModeSymlink == 0 {
					t.Errorf("--force=%v: %s is no longer the link", force, dst)
				}
			}
			if target == "full" {
				if b, _ := os.ReadFile(filepath.Join(to, "model.safetensors")); string(b) != "old" {
					t.Errorf("wrote through the link")
				}
			}
			if target == "missing" {
				if _, err := os.Lstat(to); err == nil {
					t.Errorf("created the link's target")
				}
			}
		})
	}
}
