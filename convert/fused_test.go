package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/internal/synth"
)

// fusedHooks returns hooks that record, per output file, whether it was
// fused, and count the statistics jobs.
func fusedHooks() (*hooks, map[string]bool, *int) {
	var mu sync.Mutex
	fused := map[string]bool{}
	stats := new(int)
	return &hooks{
		fused: func(file string, ok bool) error {
			mu.Lock()
			defer mu.Unlock()
			fused[file] = ok
			return nil
		},
		job: func(_ string, isStats bool) {
			mu.Lock()
			defer mu.Unlock()
			if isStats {
				*stats++
			}
		},
	}, fused, stats
}

// TestFusedGolden: the golden double-quantized models are converted in one
// pass (no statistics job; every file fused) and their bytes are those of
// bitsandbytes, with one worker and with several.
func TestFusedGolden(t *testing.T) {
	n := 0
	for _, c := range goldenCases() {
		if c.opts.NoDoubleQuant {
			continue
		}
		for _, workers := range []int{1, 3} {
			t.Run(fmt.Sprintf("%s/j%d", c.want, workers), func(t *testing.T) {
				h, fused, stats := fusedHooks()
				opts := c.opts
				opts.Workers, opts.hooks = workers, h
				dst := filepath.Join(t.TempDir(), "out")
				if _, err := Convert(context.Background(), filepath.Join(goldenModels, c.src), dst, opts); err != nil {
					t.Fatal(err)
				}
				compareDirs(t, dst, filepath.Join(goldenModels, c.want))
				if len(fused) == 0 || *stats != 0 {
					t.Errorf("files fused %v, %d statistics jobs; want every file fused and none", fused, *stats)
				}
				for f, ok := range fused {
					if !ok {
						t.Errorf("%s not fused", f)
					}
				}
			})
			n++
		}
	}
	if n == 0 {
		t.Fatal("no double-quantized golden case")
	}
}

// TestFusedSharded: a sharded output whose tensors sit on and around the
// job and block boundaries, converted in one pass, is byte for byte the
// two passes' output, with 1, 3 and 7 workers.
func TestFusedSharded(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 1<<40, "")
	base := Options{MaxShardSize: 60_000, jobElements: testJobElems}
	o := base
	o.Workers, o.hooks = 1, &hooks{twoPass: true}
	want, _ := convertTo(t, src, o)
	wantFiles := readDir(t, want)
	if len(wantFiles) < 4 {
		t.Fatalf("%d output files, want a sharded output", len(wantFiles))
	}
	for _, workers := range []int{1, 3, 7} {
		h, fused, stats := fusedHooks()
		o := base
		o.Workers, o.hooks = workers, h
		got, _ := convertTo(t, src, o)
		sameFiles(t, readDir(t, got), wantFiles, fmt.Sprintf("the two passes' output (-j %d)", workers))
		nFused := 0
		for _, ok := range fused {
			if ok {
				nFused++
			}
		}
		if nFused == 0 || (nFused == len(fused) && *stats != 0) {
			t.Errorf("-j %d: files fused %v with %d statistics jobs", workers, fused, *stats)
		}
	}
}

// errPlanned stops a conversion once its files' fusing is decided.
var errPlanned = errors.New("planned")

// TestFusedFallback: where the statistics can change the length of a
// file's header (an offset after a quant-state JSON gains a digit, and the
// padding to 8 bytes grows), the file is not fused, and its two passes
// give the same bytes as a run that fuses nothing. The test searches for
// such a file among small variations of one model.
func TestFusedFallback(t *testing.T) {
	J := int64(testJobElems)
	model := func(pad int, n int64) []synth.Tensor {
		x := strings.Repeat("x", pad)
		return []synth.Tensor{
			{Name: "model.embed_tokens.weight", DType: dtype.BF16, Shape: []int64{n}},
			{Name: "model.layers.0.a" + x + ".weight", DType: dtype.BF16, Shape: []int64{1, J}},
			{Name: "model.layers.0.b.weight", DType: dtype.BF16, Shape: []int64{1, J}},
			{Name: "model.layers.0.c.weight", DType: dtype.BF16, Shape: []int64{1, J}},
		}
	}
	// The data offsets of the second weight's entries start at 20,354 +
	// 2n (the first weight's F32 and U8 entries, the embedding's 2n
	// bytes): they lie within the 21 bytes by which the first JSON can
	// grow below 100,000 for n from 39,813 to 39,822. The names' lengths
	// move the header's length modulo 8.
	var src string
search:
	for n := int64(39_800); n < 39_840; n++ {
		for pad := range 8 {
			s := writeSynth(t, model(pad, n), 1<<40, "")
			var fixed bool
			_, err := Convert(context.Background(), s, filepath.Join(t.TempDir(), "out"), Options{jobElements: testJobElems, hooks: &hooks{fused: func(_ string, ok bool) error {
				fixed = ok
				return errPlanned
			}}})
			if !errors.Is(err, errPlanned) {
				t.Fatalf("pad %d, n %d: %v, want the run stopped after planning", pad, n, err)
			}
			if !fixed {
				src = s
				break search
			}
		}
	}
	if src == "" {
		t.Fatal("no model whose header length depends on the statistics was found")
	}
	for _, workers := range []int{1, 3} {
		h, fused, stats := fusedHooks()
		got, _ := convertTo(t, src, Options{Workers: workers, jobElements: testJobElems, hooks: h})
		want, _ := convertTo(t, src, Options{Workers: workers, jobElements: testJobElems, hooks: &hooks{twoPass: true}})
		sameFiles(t, readDir(t, got), readDir(t, want), "the two passes' output")
		if fused["model.safetensors"] || *stats == 0 {
			t.Errorf("-j %d: fused %v, %d statistics jobs; want the two passes", workers, fused, *stats)
		}
	}
}

// slowFirstWeight writes a model of three weights, a of one job, b and c
// of nb and nc jobs, and converts it with the two passes on one worker.
func slowFirstWeight(t *testing.T, nb, nc int64) (src, twoPass string) {
	J := int64(testJobElems)
	src = writeSynth(t, []synth.Tensor{
		{Name: "model.layers.0.a.weight", DType: dtype.BF16, Shape: []int64{1, J}},
		{Name: "model.layers.0.b.weight", DType: dtype.BF16, Shape: []int64{nb, J}},
		{Name: "model.layers.0.c.weight", DType: dtype.BF16, Shape: []int64{nc, J}},
	}, 1<<40, "")
	twoPass, _ = convertTo(t, src, Options{Workers: 1, jobElements: testJobElems, hooks: &hooks{twoPass: true}})
	return src, twoPass
}

// TestFusedDeferred: jobs of a weight that finish before the weight
// handed out before it leave their writes to be done once its JSON is
// known, and go on; the bytes are the two passes'.
func TestFusedDeferred(t *testing.T) {
	src, want := slowFirstWeight(t, 4, 2)
	var deferred atomic.Int64
	h := &hooks{
		// The first weight's one job is slow: the next weight's jobs,
		// on the other workers, finish first.
		job: func(name string, _ bool) {
			if strings.Contains(name, ".a.") {
				time.Sleep(50 * time.Millisecond)
			}
		},
		deferred: func(string, int64) { deferred.Add(1) },
	}
	got, _ := convertTo(t, src, Options{Workers: 4, jobElements: testJobElems, hooks: h})
	sameFiles(t, readDir(t, got), readDir(t, want), "the two passes' output")
	if deferred.Load() == 0 {
		t.Error("no write was deferred")
	}

	// The slow weight fails: the deferred writes never run, and the
	// run ends with its error instead of waiting for them.
	deferred.Store(0)
	var n atomic.Int64
	h.reader = func(name string, r io.ReaderAt) io.ReaderAt {
		if strings.Contains(name, ".a.") {
			return failAfter{r: r, limit: 0, n: &n}
		}
		return r
	}
	done := make(chan error, 1)
	go func() {
		_, err := Convert(context.Background(), src, filepath.Join(t.TempDir(), "out"), Options{Workers: 4, jobElements: testJobElems, hooks: h})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errInjected) {
			t.Errorf("error %v, want the injected failure", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the conversion hangs")
	}
	if deferred.Load() == 0 {
		t.Error("no write was deferred before the failure")
	}
}

// TestFusedDeferredBounded: behind a slow weight, at most maxDeferred
// writes per worker are deferred; the next job waits for its JSONs
// instead, and the bytes are still the two passes'.
func TestFusedDeferredBounded(t *testing.T) {
	src, want := slowFirstWeight(t, 8, 3)
	var mu sync.Mutex
	most := int64(0)
	h := &hooks{
		job: func(name string, _ bool) {
			if strings.Contains(name, ".a.") {
				time.Sleep(100 * time.Millisecond)
			}
		},
		deferred: func(_ string, n int64) {
			mu.Lock()
			most = max(most, n)
			mu.Unlock()
		},
	}
	const workers = 2
	got, _ := convertTo(t, src, Options{Workers: workers, jobElements: testJobElems, hooks: h})
	sameFiles(t, readDir(t, got), readDir(t, want), "the two passes' output")
	if most != maxDeferred*workers {
		t.Errorf("at most %d writes deferred at a time behind the slow weight, want the bound, %d", most, maxDeferred*workers)
	}
}
