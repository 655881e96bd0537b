//go:build linux && (amd64 || arm64)

package convert

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/qconv/qconv/formats/safetensors"
)

// TestInputMapping converts the boundary model through the input mappings
// and with pread alone: the same bytes, at one worker and at several, and
// the mapped runs must have read through the mappings.
func TestInputMapping(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 40_000, "bfloat16")
	for _, workers := range []int{1, 3} {
		var mu sync.Mutex
		mapped := map[string]bool{}
		viaMap := Options{Workers: workers, jobElements: testJobElems, hooks: &hooks{mappedRead: func(tensor string) {
			mu.Lock()
			mapped[tensor] = true
			mu.Unlock()
		}}}
		viaPread := Options{Workers: workers, jobElements: testJobElems, hooks: &hooks{pread: true, mappedRead: func(tensor string) {
			t.Errorf("%s read through a mapping with hooks.pread", tensor)
		}}}
		a, _ := convertTo(t, src, viaMap)
		b, _ := convertTo(t, src, viaPread)
		for _, name := range []string{"model.layers.0.c.weight", "model.layers.1.z.weight", "lm_head.weight"} {
			if !mapped[name] {
				t.Errorf("-j %d: %s was not read through a mapping", workers, name)
			}
		}
		got, want := readDir(t, a), readDir(t, b)
		if len(got) != len(want) {
			t.Fatalf("-j %d: %d files through mappings, %d with pread", workers, len(got), len(want))
		}
		for name, w := range want {
			if !bytes.Equal(got[name], w) {
				t.Errorf("-j %d: %s differs between mapped and pread input", workers, name)
			}
		}
	}
}

// TestInputTruncatedDuringRun truncates an input shard when the first job
// starts: the run fails, naming the file, and leaves no output.
func TestInputTruncatedDuringRun(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 40_000, "bfloat16")
	shards, _ := filepath.Glob(filepath.Join(src, "*.safetensors"))
	if len(shards) < 2 {
		t.Fatalf("want a sharded input, got %v", shards)
	}
	victim := shards[len(shards)-1]
	f, err := safetensors.Open(victim)
	if err != nil {
		t.Fatal(err)
	}
	cut := f.DataOffset() + 8
	f.Close()
	var once sync.Once
	opts := Options{Workers: 2, jobElements: testJobElems, hooks: &hooks{job: func(string, bool) {
		once.Do(func() {
			if err := os.Truncate(victim, cut); err != nil {
				t.Error(err)
			}
		})
	}}}
	dst := filepath.Join(t.TempDir(), "out")
	_, err = Convert(context.Background(), src, dst, opts)
	if err == nil {
		t.Fatal("converted an input truncated during the run")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), filepath.Base(victim)) {
		t.Errorf("error does not name %s: %v", filepath.Base(victim), err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("output %s exists after the failed run (%v)", dst, err)
	}
}

// TestGuardInputFault reads a mapped file that was truncated after its
// pages were populated: the SIGBUS of the access becomes an error naming
// the file and tensor, not a crash.
func TestGuardInputFault(t *testing.T) {
	path := filepath.Join(t.TempDir(), "in.safetensors")
	size := int64(3 * os.Getpagesize())
	if err := os.WriteFile(path, bytes.Repeat([]byte{1}, int(size)), 0o666); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	maps := newInputMaps()
	defer maps.close()
	mem := maps.mapping(path, size, f.SyscallConn)
	if mem == nil {
		t.Skip("the file cannot be mapped here")
	}
	w := new(worker)
	b, ok, err := maps.view(w, mem, 0, size)
	if !ok {
		t.Skip("no MADV_POPULATE_READ here")
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	it := &item{src: &srcTensor{TensorInfo: &safetensors.TensorInfo{Name: "w"}}}
	r := &runner{p: &Plan{srcFiles: []string{path}}, mapOf: func(*item) ([]byte, int64) { return mem, 0 }}
	var sum int
	err = r.guardInput(w, it, func() error {
		for _, c := range b {
			sum += int(c)
		}
		return nil
	})
	if err == nil {
		t.Fatalf("read %d bytes of a truncated mapping without an error (sum %d)", len(b), sum)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `"w"`) || !strings.Contains(err.Error(), "memory fault") {
		t.Errorf("error does not name the file, the tensor and the fault: %v", err)
	}
	if len(w.view) != 0 {
		t.Error("the view was not dropped after the job")
	}
}
