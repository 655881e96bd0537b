package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

var outputFile = regexp.MustCompile(`^model.*\.safetensors(\.index\.json)?$|^config\.json$`)

// outputSet returns the weight files, index and config.json of dir.
func outputSet(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	for name, b := range readDir(t, dir) {
		if outputFile.MatchString(name) {
			m[name] = b
		}
	}
	return m
}

func sameSet(a, b map[string][]byte) bool { return maps.EqualFunc(a, b, bytes.Equal) }

var errKilled = errors.New("killed (test)")

// TestInstallInterrupted follows the recipe of issue 14: convert --force
// into a DST holding an older conversion with other shards, killed before
// each step of the install (every rename). DST must never hold a mix of
// the two outputs, and the rerun must finish the install: the new output
// plus the user's other files, nothing left beside DST but the record.
func TestInstallInterrupted(t *testing.T) {
	src := filepath.Join(goldenModels, "tiny-llama-bf16")
	optsA := Options{MaxShardSize: 150_000, NoDoubleQuant: true}
	optsB := shardedOpts
	optsB.Force = true
	a := outputSet(t, func() string { d, _ := convertTo(t, src, optsA); return d }())
	bDir, _ := convertTo(t, src, optsB)
	b, bAll := outputSet(t, bDir), readDir(t, bDir)
	if len(a) < 3 || len(b) < 4 || len(a) == len(b) {
		t.Fatalf("outputs of %d and %d files", len(a), len(b))
	}
	setup := func(t *testing.T) string {
		dst := filepath.Join(t.TempDir(), "out")
		if _, err := Convert(context.Background(), src, dst, optsA); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, "keep.txt"), []byte("mine"), 0o666)
		os.MkdirAll(filepath.Join(dst, "sub"), 0o777)
		os.WriteFile(filepath.Join(dst, "sub", "notes.txt"), []byte("notes"), 0o666)
		return dst
	}
	// The steps of an uninterrupted install.
	var steps []string
	o := optsB
	o.hooks = &hooks{install: func(s string) error { steps = append(steps, s); return nil }}
	if _, err := Convert(context.Background(), src, setup(t), o); err != nil {
		t.Fatal(err)
	}
	if len(steps) < 5 || !slices.Contains(steps, "aside") || !slices.Contains(steps, "move keep.txt") {
		t.Fatalf("steps %q", steps)
	}
	for k, step := range steps {
		t.Run(fmt.Sprintf("%d-%s", k, strings.ReplaceAll(step, " ", "_")), func(t *testing.T) {
			dst := setup(t)
			n := 0
			o := optsB
			o.hooks = &hooks{install: func(string) error {
				if n++; n > k {
					return errKilled
				}
				return nil
			}}
			if _, err := Convert(context.Background(), src, dst, o); !errors.Is(err, errKilled) {
				t.Fatalf("error %v, want the simulated kill", err)
			}
			if _, err := os.Stat(dst); err == nil {
				if got := outputSet(t, dst); !sameSet(got, a) && !sameSet(got, b) {
					t.Fatalf("killed before %q: DST holds a mix: %q", step, slices.Sorted(maps.Keys(got)))
				}
			}
			var log bytes.Buffer
			o = optsB
			o.Log = &log
			if _, err := Convert(context.Background(), src, dst, o); err != nil {
				t.Fatal(err)
			}
			want := maps.Clone(bAll)
			want["keep.txt"] = []byte("mine")
			sameFiles(t, readDir(t, dst), want, "the new output and keep.txt")
			if got, err := os.ReadFile(filepath.Join(dst, "sub", "notes.txt")); err != nil || string(got) != "notes" {
				t.Errorf("sub/notes.txt: %q, %v", got, err)
			}
			ents, _ := os.ReadDir(filepath.Dir(dst))
			for _, e := range ents {
				if e.Name() != "out" && e.Name() != ".out.qconv.json" {
					t.Errorf("%s left beside DST", e.Name())
				}
			}
			// And once more: nothing to do.
			log.Reset()
			if sum, err := Convert(context.Background(), src, dst, o); err != nil || !sum.AlreadyComplete {
				t.Errorf("third run: %v, %q", err, log.String())
			}
		})
	}
}

// TestAlreadyComplete: rerunning a finished conversion with the same
// arguments does nothing and succeeds, whole or partitioned; other
// arguments are refused without --force; a changed source is converted
// again.
func TestAlreadyComplete(t *testing.T) {
	src := writeSynth(t, boundaryTensors()[:6], 1<<40, "bfloat16")
	dst := filepath.Join(t.TempDir(), "out")
	o := Options{MaxShardSize: 50_000}
	if _, err := Convert(context.Background(), src, dst, o); err != nil {
		t.Fatal(err)
	}
	ref := readDir(t, dst)
	fi0, _ := os.Stat(filepath.Join(dst, "model-00001-of-00002.safetensors"))
	for _, oo := range []Options{o, {MaxShardSize: 50_000, Part: Part{Index: 1, Count: 2}}, {MaxShardSize: 50_000, Finalize: true}, {MaxShardSize: 50_000, Force: true}} {
		var log bytes.Buffer
		oo.Log = &log
		sum, err := Convert(context.Background(), src, dst, oo)
		if err != nil || !sum.AlreadyComplete {
			t.Fatalf("%+v: %v, %q", oo, err, log.String())
		}
	}
	if fi, _ := os.Stat(filepath.Join(dst, "model-00001-of-00002.safetensors")); !os.SameFile(fi, fi0) || !fi.ModTime().Equal(fi0.ModTime()) {
		t.Error("a no-op rerun rewrote the output")
	}
	// Other arguments.
	if _, err := Convert(context.Background(), src, dst, Options{MaxShardSize: 50_000, Blocksize: 128}); err == nil || !strings.Contains(err.Error(), "other arguments") || !strings.Contains(err.Error(), "--force") {
		t.Errorf("other blocksize: %v", err)
	}
	sameFiles(t, readDir(t, dst), ref, "the first output")
	// A damaged output (wrong size) is not "complete": it is redone.
	os.Truncate(filepath.Join(dst, "model-00002-of-00002.safetensors"), 10)
	if sum, err := Convert(context.Background(), src, dst, o); err != nil || sum.AlreadyComplete {
		t.Fatalf("damaged: %v", err)
	}
	sameFiles(t, readDir(t, dst), ref, "the first output")
	// A changed source (same size, mtime put back) is converted again
	// without --force.
	shard := filepath.Join(src, "model.safetensors")
	fi, _ := os.Stat(shard)
	f, _ := os.OpenFile(shard, os.O_RDWR, 0)
	f.WriteAt([]byte{0x7f, 0x7f, 0x7f}, fi.Size()-64)
	f.Close()
	os.Chtimes(shard, fi.ModTime(), fi.ModTime())
	if sum, err := Convert(context.Background(), src, dst, o); err != nil || sum.AlreadyComplete {
		t.Fatalf("changed source: %v", err)
	}
	sameFiles(t, readDir(t, dst), referenceOutput(t, src, o), "a conversion of the changed source")
}
