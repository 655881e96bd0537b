package convert

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
)

// TensorDone reports every tensor exactly once, in plan order, whatever
// the number of workers, including empty tensors and those split into
// several jobs; with parts, each part reports its own tensors.
func TestTensorDoneOrder(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 300_000, "")
	for _, w := range []int{1, 3} {
		var mu sync.Mutex
		var got []int
		var n int
		opts := Options{Workers: w, jobElements: testJobElems, TensorDone: func(i, total int, tp TensorPlan) {
			mu.Lock()
			defer mu.Unlock()
			got, n = append(got, i), total
			if tp.Name == "" || tp.SrcBytes < 0 || tp.OutBytes < 0 {
				t.Errorf("-j %d: tensor %d: %+v", w, i, tp)
			}
		}}
		sum, err := Convert(context.Background(), src, filepath.Join(t.TempDir(), "out"), opts)
		if err != nil {
			t.Fatal(err)
		}
		if want := len(sum.Plan.Tensors()); n != want || len(got) != want {
			t.Fatalf("-j %d: %d reports of %d tensors (n %d)", w, len(got), want, n)
		}
		for k, i := range got {
			if i != k {
				t.Fatalf("-j %d: reports in order %v", w, got)
			}
		}
	}

	// Parts: each reports the tensors it writes, in order; together all.
	seen := map[int]bool{}
	dst := filepath.Join(t.TempDir(), "out")
	var total int
	for i := range 3 {
		var got []int
		opts := Options{Workers: 2, jobElements: testJobElems, MaxShardSize: 300_000, Part: Part{Index: i, Count: 3},
			TensorDone: func(k, n int, _ TensorPlan) { got, total = append(got, k), n }}
		sum, err := Convert(context.Background(), src, dst, opts)
		if err != nil {
			t.Fatal(err)
		}
		if len(sum.Plan.Files) < 3 {
			t.Fatalf("%d output files: the test needs one per part at least", len(sum.Plan.Files))
		}
		for j := range got {
			if j > 0 && got[j] <= got[j-1] {
				t.Errorf("part %d: reports out of order: %v", i, got)
			}
			seen[got[j]] = true
		}
	}
	if len(seen) != total || total == 0 {
		t.Errorf("parts reported %d of %d tensors", len(seen), total)
	}
}
