//go:build unix

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// copyModel copies a golden model directory into a new temporary one.
func copyModel(t *testing.T, name string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), name)
	os.MkdirAll(dst, 0o777)
	ents, err := os.ReadDir(filepath.Join(models, name))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(models, name, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, e.Name()), b, 0o666)
	}
	return dst
}

// plant replaces file name of dir by a FIFO, or by a symbolic link to
// /dev/zero when zero is set.
func plant(t *testing.T, dir, name string, zero bool) {
	t.Helper()
	path := filepath.Join(dir, name)
	os.Remove(path)
	var err error
	if zero {
		err = os.Symlink("/dev/zero", path)
	} else {
		err = syscall.Mkfifo(path, 0o666)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// qconvQuick runs qconv and fails the test if it does not return within a
// few seconds (a FIFO blocks open(2) forever).
func qconvQuick(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	go func() {
		c, o, e := qconv(args...)
		done <- result{c, o, e}
	}()
	select {
	case r := <-done:
		return r.code, r.out, r.err
	case <-time.After(20 * time.Second):
		t.Fatalf("qconv %s: still running after 20 s (blocked on a FIFO?)", strings.Join(args, " "))
	}
	return 0, "", ""
}

// TestNotRegularInputs follows the recipe of issue 14: a FIFO (or a link
// to /dev/zero) in place of a shard, model.safetensors, config.json or the
// index makes every command exit 2 saying "not a regular file" at once,
// and audit report it as an error, not as a missing file or nothing.
func TestNotRegularInputs(t *testing.T) {
	cases := []struct {
		model, file string
		zero        bool
	}{
		{"tiny-llama-bf16", "model.safetensors", false},
		{"tiny-llama-bf16", "config.json", false},
		{"tiny-llama-bf16", "config.json", true},
		{"tiny-llama-f32", "model-00003-of-00010.safetensors", false},
		{"tiny-llama-f32", "model.safetensors.index.json", false},
		{"tiny-llama-bf16-nf4-dq-u8", "model.safetensors", false},
		{"tiny-llama-bf16-nf4-dq-u8", "config.json", true},
	}
	for _, c := range cases {
		what := "fifo"
		if c.zero {
			what = "devzero"
		}
		t.Run(c.model+"/"+c.file+"/"+what, func(t *testing.T) {
			src := copyModel(t, c.model)
			plant(t, src, c.file, c.zero)
			out := filepath.Join(t.TempDir(), "out")
			cmds := [][]string{{"inspect", src}}
			if strings.Contains(c.model, "nf4") {
				cmds = append(cmds, []string{"dequant", src, out}, []string{"verify", filepath.Join(models, "tiny-llama-bf16"), src})
			} else {
				cmds = append(cmds, []string{"convert", src, out, "--progress", "never"}, []string{"verify", src, filepath.Join(models, "tiny-llama-bf16-nf4-dq-u8")})
			}
			for _, args := range cmds {
				code, _, errOut := qconvQuick(t, args...)
				if code != 2 || !strings.Contains(errOut, "not a regular file") {
					t.Errorf("qconv %s: exit %d, %s", args[0], code, errOut)
				}
			}
			code, out2, _ := qconvQuick(t, "audit", src)
			if code != 1 || !strings.Contains(out2, "not a regular file") || strings.Contains(out2, "missing") {
				t.Errorf("audit: exit %d:\n%s", code, out2)
			}
		})
	}
}
