package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// shardedOpts makes the tiny golden model come out as several files.
var shardedOpts = Options{MaxShardSize: 100_000, Workers: 2}

func referenceOutput(t *testing.T, src string, o Options) map[string][]byte {
	t.Helper()
	dir, _ := convertTo(t, src, o)
	return readDir(t, dir)
}

func TestPartitioned(t *testing.T) {
	src := filepath.Join(goldenModels, "tiny-llama-bf16")
	ref := referenceOutput(t, src, shardedOpts)
	nfiles := 0
	for name := range ref {
		if strings.HasSuffix(name, ".safetensors") {
			nfiles++
		}
	}
	if nfiles < 3 {
		t.Fatalf("only %d output files", nfiles)
	}
	for _, n := range []int{1, 2, 3, nfiles + 2} {
		t.Run(fmt.Sprintf("N=%d", n), func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "out")
			for i := range n {
				o := shardedOpts
				o.Part = Part{Index: n - 1 - i, Count: n} // any order
				sum, err := Convert(context.Background(), src, dst, o)
				if err != nil {
					t.Fatalf("part %d/%d: %v", n-1-i, n, err)
				}
				if n > 1 {
					if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
						t.Fatalf("part %d/%d created %s", n-1-i, n, dst)
					}
				}
				if n > 1 && i == 0 {
					// Finishing before every part is done is refused.
					o := shardedOpts
					o.Finalize = true
					if _, err := Convert(context.Background(), src, dst, o); err == nil || !strings.Contains(err.Error(), "missing or incomplete") {
						t.Errorf("early finalize: %v", err)
					}
					// So is a part with other options.
					o = shardedOpts
					o.NoDoubleQuant = true
					o.Part = Part{Index: 0, Count: n}
					if _, err := Convert(context.Background(), src, dst, o); err == nil || !strings.Contains(err.Error(), "double-quant") {
						t.Errorf("part with other options: %v", err)
					}
				}
				_ = sum
			}
			if n > 1 {
				o := shardedOpts
				o.Finalize = true
				if _, err := Convert(context.Background(), src, dst, o); err != nil {
					t.Fatal(err)
				}
			}
			sameFiles(t, readDir(t, dst), ref, "the one-process output")
			noOutput(t, filepath.Join(filepath.Dir(dst), "none"))
		})
	}
}

// TestResume interrupts a conversion after K bytes written, for many K,
// as a crash (nothing cleaned up) or as a failure, and checks that
// rerunning the same command gives the output of an uninterrupted run.
func TestResume(t *testing.T) {
	src := filepath.Join(goldenModels, "tiny-llama-bf16")
	ref := referenceOutput(t, src, shardedOpts)
	var total int64 // bytes written to weight files
	for name, b := range ref {
		if strings.HasSuffix(name, ".safetensors") {
			total += int64(len(b))
		}
	}
	kept := 0
	for _, crash := range []bool{true, false} {
		for k := int64(1); k < total; k += total / 13 {
			t.Run(fmt.Sprintf("crash=%v/K=%d", crash, k), func(t *testing.T) {
				dst := filepath.Join(t.TempDir(), "out")
				var n atomic.Int64
				o := shardedOpts
				o.hooks = &hooks{crash: crash, writer: func(name string, w io.WriterAt) io.WriterAt {
					return failAfter{w: w, limit: k, n: &n}
				}}
				if _, err := Convert(context.Background(), src, dst, o); err == nil {
					t.Fatal("no error")
				}
				if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s exists after an interrupted run", dst)
				}
				if !crash {
					// A failure keeps the finished files and removes the
					// rest.
					work, _ := workDirFor(dst)
					ents, _ := os.ReadDir(work)
					for _, e := range ents {
						name := e.Name()
						if !strings.HasSuffix(name, ".safetensors") {
							continue
						}
						if _, err := os.Stat(filepath.Join(work, "."+name+doneSuffix)); err != nil {
							t.Errorf("unfinished %s left in %s after a failure", name, work)
						}
					}
				}
				var log bytes.Buffer
				o = shardedOpts
				o.Log = &log
				if _, err := Convert(context.Background(), src, dst, o); err != nil {
					t.Fatal(err)
				}
				if strings.Contains(log.String(), "already complete") {
					kept++
				}
				sameFiles(t, readDir(t, dst), ref, "the one-process output")
				noOutput(t, dst+"-none")
			})
		}
	}
	if kept == 0 {
		t.Error("no rerun kept a finished file")
	}
}

func TestResumeRefusesChanges(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 100_000, "bfloat16")
	dst := filepath.Join(t.TempDir(), "out")
	o := Options{MaxShardSize: 50_000, Part: Part{Index: 0, Count: 2}}
	if _, err := Convert(context.Background(), src, dst, o); err != nil {
		t.Fatal(err)
	}
	// Other options.
	o2 := o
	o2.Blocksize = 128
	if _, err := Convert(context.Background(), src, dst, o2); err == nil || !strings.Contains(err.Error(), `blocksize "64" (now "128")`) {
		t.Errorf("other blocksize: %v", err)
	}
	// A touched source file: its fingerprint changed, the work goes on
	// (the files made from it are redone; see TestResumeSourceChanged).
	shard := filepath.Join(src, "model-00001-of-00007.safetensors")
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(shard, later, later); err != nil {
		t.Fatal(err)
	}
	var note bytes.Buffer
	o.Log = &note
	if _, err := Convert(context.Background(), src, dst, o); err != nil || !strings.Contains(note.String(), "modified since") {
		t.Errorf("changed source: %v, log %q", err, note.String())
	}
	o.Log = nil
	// --restart discards the old work and starts again.
	o.Restart = true
	if _, err := Convert(context.Background(), src, dst, o); err != nil {
		t.Fatal(err)
	}
	// A finished file that was damaged is detected and rewritten.
	o = Options{MaxShardSize: 50_000}
	work, _ := workDirFor(dst)
	ents, _ := os.ReadDir(work)
	damaged := ""
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".safetensors") {
			path := filepath.Join(work, e.Name())
			b, _ := os.ReadFile(path)
			b[len(b)-1] ^= 1
			os.WriteFile(path, b, 0o666)
			damaged = e.Name()
			break
		}
	}
	var log bytes.Buffer
	o.Log = &log
	if _, err := Convert(context.Background(), src, dst, o); err != nil {
		t.Fatal(err)
	}
	if damaged == "" || strings.Contains(log.String(), damaged+" is already complete") {
		t.Errorf("damaged file %q kept: %s", damaged, log.String())
	}
	ref := referenceOutput(t, src, Options{MaxShardSize: 50_000})
	sameFiles(t, readDir(t, dst), ref, "the one-process output")
}

// TestResumeSourceChanged follows the recipe of issue 14: after an
// interrupted conversion, 100 bytes in the middle of a source shard change
// and its modification time is put back. The rerun must not keep the
// output files made from the old bytes.
func TestResumeSourceChanged(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 100_000, "bfloat16")
	o := Options{MaxShardSize: 50_000}
	dst := filepath.Join(t.TempDir(), "out")
	// Part 0 of 2 stands for a run that was killed after some files.
	if _, err := Convert(context.Background(), src, dst, Options{MaxShardSize: 50_000, Part: Part{Index: 0, Count: 2}}); err != nil {
		t.Fatal(err)
	}
	work, _ := workDirFor(dst)
	ents, _ := os.ReadDir(work)
	finished := 0
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), doneSuffix) {
			finished++
		}
	}
	if finished == 0 {
		t.Fatal("no finished file")
	}
	// Change 100 bytes in the middle of every source shard's data (so
	// that some finished output file is made from changed bytes) and
	// restore the modification times.
	shards, _ := filepath.Glob(filepath.Join(src, "model-*.safetensors"))
	for _, sh := range shards {
		fi, err := os.Stat(sh)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(sh, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 100)
		at := fi.Size() - fi.Size()/3
		f.ReadAt(b, at)
		for i := range b {
			b[i] ^= 0x21
		}
		f.WriteAt(b, at)
		f.Close()
		if err := os.Chtimes(sh, fi.ModTime(), fi.ModTime()); err != nil {
			t.Fatal(err)
		}
		if fi2, _ := os.Stat(sh); !fi2.ModTime().Equal(fi.ModTime()) || fi2.Size() != fi.Size() {
			t.Fatal("size or mtime not restored")
		}
	}
	var log bytes.Buffer
	o.Log = &log
	if _, err := Convert(context.Background(), src, dst, o); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(log.String(), "already complete") {
		t.Errorf("kept output files made from the old source:\n%s", log.String())
	}
	sameFiles(t, readDir(t, dst), referenceOutput(t, src, Options{MaxShardSize: 50_000}), "a conversion of the changed source")
}
