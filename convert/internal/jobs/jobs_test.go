package jobs

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// TestRun checks that every job runs once, in order with one worker, and
// that no job starts window or more jobs ahead of an unfinished one; then
// that the first error, or the context's cause, is returned.
func TestRun(t *testing.T) {
	ctx := context.Background()
	const n = 1000
	for _, workers := range []int{0, 1, 2, 7} {
		var mu sync.Mutex
		var ran []int
		maxAhead := 0
		finished := make([]atomic.Bool, n)
		window := 2*workers + 1
		seq := func(yield func(int) bool) {
			for i := range n {
				if !yield(i) {
					return
				}
			}
		}
		err := Run(ctx, workers, window, seq, func() *int { return new(int) }, func(_ context.Context, w *int, j int) error {
			oldest := 0
			for oldest < n && finished[oldest].Load() {
				oldest++
			}
			*w++ // per-worker state: a data race here if shared
			mu.Lock()
			maxAhead = max(maxAhead, j-oldest)
			ran = append(ran, j)
			mu.Unlock()
			finished[j].Store(true)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(ran) != n {
			t.Errorf("workers %d: %d jobs ran, want %d", workers, len(ran), n)
		}
		if workers <= 1 && !slices.IsSorted(ran) {
			t.Errorf("workers %d: jobs ran out of order", workers)
		}
		slices.Sort(ran)
		if len(slices.Compact(ran)) != n {
			t.Errorf("workers %d: a job ran twice", workers)
		}
		if maxAhead >= max(window, workers) {
			t.Errorf("workers %d: a job started %d ahead of the oldest unfinished one (window %d)", workers, maxAhead, window)
		}
	}

	boom := errors.New("boom")
	for _, workers := range []int{1, 4} {
		var after atomic.Int64
		err := Run(ctx, workers, 8, slices.Values(make([]int, n)), func() int { return 0 }, func(ctx context.Context, _ int, _ int) error {
			if after.Add(1) == 10 {
				return boom
			}
			return nil
		})
		if err != boom {
			t.Errorf("workers %d: error %v, want the job's", workers, err)
		}
		if c := after.Load(); c > 10+int64(workers)+8 {
			t.Errorf("workers %d: %d jobs ran after the error", workers, c-10)
		}
	}

	cause := errors.New("stopped")
	cctx, cancel := context.WithCancelCause(ctx)
	cancel(cause)
	for _, workers := range []int{1, 4} {
		err := Run(cctx, workers, 8, slices.Values(make([]int, n)), func() int { return 0 }, func(context.Context, int, int) error {
			t.Error("a job ran after cancellation")
			return nil
		})
		if err != cause {
			t.Errorf("workers %d: error %v, want the cancellation cause", workers, err)
		}
	}
}

// TestGrow checks that Grow reuses a large enough array.
func TestGrow(t *testing.T) {
	b := Grow([]byte(nil), 10)
	if len(b) != 10 {
		t.Fatalf("len %d", len(b))
	}
	c := Grow(b, 5)
	if len(c) != 5 || &c[0] != &b[0] {
		t.Errorf("Grow(10-byte slice, 5) did not reuse its array")
	}
	if d := Grow(c, 11); len(d) != 11 {
		t.Errorf("len %d", len(d))
	}
}

// TestRunJobsStopOnCancel: a job sequence that stops early because the
// context was cancelled (as convert's stops while it waits for a layout)
// makes Run return the cancellation's cause, not success.
func TestRunJobsStopOnCancel(t *testing.T) {
	cause := errors.New("stop")
	for _, workers := range []int{1, 3} {
		ctx, cancel := context.WithCancelCause(context.Background())
		seq := func(yield func(int) bool) {
			for i := range 10 {
				if i == 5 {
					cancel(cause)
					return // the sequence sees the cancellation first
				}
				if !yield(i) {
					return
				}
			}
		}
		err := Run(ctx, workers, 4, seq, func() struct{} { return struct{}{} }, func(context.Context, struct{}, int) error { return nil })
		if !errors.Is(err, cause) {
			t.Errorf("%d workers: Run = %v, want %v", workers, err, cause)
		}
	}
}
