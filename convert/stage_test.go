package convert

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStagedJobOrder checks the order in which the reference path (one
// worker) runs the jobs of a sharded conversion: a weight is quantized
// only after the statistics of every weight whose quant state shares an
// output file with it, and the statistics of output file k+2 wait until
// the tensors of file k are being quantized (the two passes overlap, one
// file apart).
func TestStagedJobOrder(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 1<<40, "")
	type rec struct {
		name  string
		stats bool
	}
	var mu sync.Mutex
	var order []rec
	o := Options{Workers: 1, MaxShardSize: 60_000, jobElements: testJobElems, hooks: &hooks{job: func(name string, stats bool) {
		mu.Lock()
		order = append(order, rec{name, stats})
		mu.Unlock()
	}}}
	_, sum := convertTo(t, src, o)
	p := sum.Plan
	if len(p.Files) < 4 {
		t.Fatalf("%d output files, want at least 4", len(p.Files))
	}
	byName := map[string]*item{}
	for _, it := range p.items {
		byName[it.src.Name] = it
	}
	files := func(it *item) (lo, hi int) {
		lo, hi = len(p.Files), -1
		for _, e := range it.entries {
			lo, hi = min(lo, int(e.file)), max(hi, int(e.file))
		}
		return lo, hi
	}
	qsFile := func(it *item) int { return int(it.entry(entryQuantState).file) }
	statsDone := map[int]int{} // output file -> stats jobs run of weights whose quant state it holds
	statsAll := map[int]int{}
	for _, r := range order {
		if r.stats {
			statsAll[qsFile(byName[r.name])]++
		}
	}
	firstQuant, lastStats := len(order), -1
	for i, r := range order {
		if r.stats {
			lastStats = i
		} else {
			firstQuant = min(firstQuant, i)
		}
	}
	for i, r := range order {
		it := byName[r.name]
		if r.stats {
			// The statistics of file f run only for the quantization
			// of a weight that writes to file f-1 or later.
			f := qsFile(it)
			next := -1
			for _, r2 := range order[i+1:] {
				if !r2.stats && byName[r2.name].quantize {
					_, next = files(byName[r2.name])
					break
				}
			}
			if next < f-1 {
				t.Errorf("job %d: statistics of %s (file %d) run before the quantization of a weight that ends in file %d", i, r.name, f, next)
			}
			statsDone[f]++
			continue
		}
		if !it.quantize {
			// Kept tensors that the statistics cannot move are copied
			// while the statistics pass runs (TestKeptDuringStats).
			continue
		}
		lo, hi := files(it)
		for f := lo; f <= hi; f++ {
			if statsDone[f] != statsAll[f] {
				t.Errorf("job %d: %s quantized before the statistics of file %d are complete (%d of %d)", i, r.name, f, statsDone[f], statsAll[f])
			}
		}
	}
	if firstQuant > lastStats {
		t.Error("all statistics jobs ran before the first quantization job")
	}
}

// TestStagedFailure: a statistics job that fails while quantization jobs
// wait for its file's layout ends the conversion with its error.
func TestStagedFailure(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 1<<40, "")
	for _, w := range []int{1, 3} {
		for _, victim := range []string{"model.layers.0.a.weight", "model.layers.1.g.weight", "model.layers.1.z.weight"} {
			t.Run(fmt.Sprintf("j%d/%s", w, victim), func(t *testing.T) {
				var n atomic.Int64
				o := Options{Workers: w, MaxShardSize: 60_000, jobElements: testJobElems, hooks: &hooks{reader: func(name string, r io.ReaderAt) io.ReaderAt {
					if name != victim {
						return r
					}
					return failAfter{r: r, limit: 1000, n: &n}
				}}}
				done := make(chan error, 1)
				go func() {
					_, err := Convert(context.Background(), src, filepath.Join(t.TempDir(), "out"), o)
					done <- err
				}()
				select {
				case err := <-done:
					if err == nil || !strings.Contains(err.Error(), "injected failure") || !strings.Contains(err.Error(), victim) {
						t.Errorf("error %v, want the injected failure reading %s", err, victim)
					}
				case <-time.After(time.Minute):
					t.Fatal("the conversion hangs")
				}
			})
		}
	}
}

// TestKeptDuringStats: kept tensors, whose offsets the statistics cannot
// change, are copied while the statistics pass runs (so that the output's
// writes start before the layout is known), spread among the statistics
// jobs; and the bytes are those of the golden model.
func TestKeptDuringStats(t *testing.T) {
	src := filepath.Join(goldenModels, "tiny-llama-bf16")
	for _, w := range []int{1, 3} {
		var mu sync.Mutex
		var order []string // "s" statistics, "k" kept, "q" quantization
		o := Options{Workers: w, jobElements: testJobElems, hooks: &hooks{twoPass: true, job: func(name string, stats bool) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case stats:
				order = append(order, "s")
			case strings.Contains(name, "_proj"):
				order = append(order, "q")
			default:
				order = append(order, "k")
			}
		}}}
		dir, _ := convertTo(t, src, o)
		sameFiles(t, readDir(t, dir), readDir(t, filepath.Join(goldenModels, "tiny-llama-bf16-nf4-dq-u8")), "the golden output")
		seq := strings.Join(order, "")
		lastStats := strings.LastIndex(seq, "s")
		if w == 1 && strings.Contains(seq[lastStats:], "k") {
			t.Errorf("-j 1: kept tensors copied after the statistics pass: %s", seq)
		}
		if first := strings.Index(seq, "k"); first < 0 || first > lastStats {
			t.Errorf("-j %d: no kept tensor copied during the statistics pass: %s", w, seq)
		}
		if w == 1 && strings.Index(seq, "s") > strings.LastIndex(seq, "k") {
			t.Errorf("-j 1: kept tensors all copied before the statistics pass: %s", seq)
		}
	}
}

// TestEarlyOffsetsFixed checks the argument of placeEarly: a tensor whose
// offset is the same with every quant-state JSON at its shortest and at
// its longest has that offset with any lengths in between. Kept tensors
// must be among those (else nothing would be placed early).
func TestEarlyOffsetsFixed(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 1<<40, "")
	rng := rand.New(rand.NewPCG(3, 4))
	for _, maxShard := range []int64{1 << 40, 60_000} {
		_, sum := convertTo(t, src, Options{MaxShardSize: maxShard, jobElements: testJobElems})
		p := sum.Plan
		r := &runner{p: p}
		short := func(it *item) (int64, error) { return int64(len(p.quantState(it, 0).MarshalPython())), nil }
		long := func(it *item) (int64, error) { return p.maxQuantStateLen(it), nil }
		between := func(it *item) (int64, error) {
			a, _ := short(it)
			b, _ := long(it)
			return a + rng.Int64N(b-a+1), nil
		}
		keptFixed := 0
		for fi := range p.Files {
			lo, refs, err := r.plan(fi, short)
			if err != nil {
				t.Fatal(err)
			}
			hi, _, err := r.plan(fi, long)
			if err != nil {
				t.Fatal(err)
			}
			for i := range lo.Begin {
				off := lo.DataOffset() + lo.Begin[i]
				if off != hi.DataOffset()+hi.Begin[i] {
					continue
				}
				if !p.items[refs[i].item].quantize {
					keptFixed++
				}
				it := p.items[refs[i].item]
				name := p.entryName(it, &it.entries[refs[i].entry])
				for range 50 {
					mid, midRefs, err := r.plan(fi, between)
					if err != nil {
						t.Fatal(err)
					}
					if got := mid.DataOffset() + mid.Begin[i]; got != off || midRefs[i] != refs[i] {
						t.Fatalf("max shard %d, file %d: %s at %d with lengths in between, %d at both ends", maxShard, fi, name, got, off)
					}
				}
			}
		}
		if keptFixed == 0 {
			t.Errorf("max shard %d: no kept tensor has a fixed offset", maxShard)
		}
	}
}
