// Package jobs runs the jobs of convert's pipelines (convert, dequant,
// verify) on a bounded number of goroutines: jobs are handed out in order,
// each worker has its own scratch state, the first error stops the rest,
// and one worker runs them in order on the calling goroutine, the
// reference path that the parallel one must match.
//
// It is not a general task scheduler: jobs are not retried, reordered or
// prioritized, and results are not collected (jobs write them where they
// belong, at offsets planned before the run).
package jobs

import (
	"context"
	"iter"
	"sync"
)

// Run runs do for every job of jobs, on workers goroutines.
//
// Jobs are produced in order by one goroutine (the caller's) and handed to
// the workers through an unbuffered channel, so at most workers jobs are
// being worked on. A job may be handed out only while it is fewer than
// window jobs ahead of the oldest unfinished job: per-tensor state that
// lives from a tensor's first job to its last (the absmax vector of a
// double-quantized weight) therefore exists for at most the tensors that
// overlap a run of window consecutive jobs.
//
// The first error returned by do wins: it cancels the rest (jobs not
// started are skipped, running ones finish) and is returned; so is the
// cause of ctx's cancellation. With workers <= 1 the jobs run in order on the calling goroutine: that is
// the reference path, which the parallel path must match byte for byte.
//
// newWorker makes the per-worker state (buffers) passed to do; each worker
// gets its own, so do never shares buffers between goroutines.
func Run[W any, J any](ctx context.Context, workers, window int, jobs iter.Seq[J], newWorker func() W, do func(ctx context.Context, w W, j J) error) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	if workers <= 1 {
		w := newWorker()
		for j := range jobs {
			if err := ctx.Err(); err != nil {
				return context.Cause(ctx)
			}
			if err := do(ctx, w, j); err != nil {
				return err
			}
		}
		// The jobs may have stopped early because ctx was cancelled.
		return context.Cause(ctx)
	}
	window = max(window, workers)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	type seqJob struct {
		seq int
		job J
	}
	ch := make(chan seqJob)
	tokens := make(chan struct{}, window) // one per job handed out and not yet retired
	var (
		mu   sync.Mutex
		done = make([]bool, window) // done[seq%window] for seq in [low, low+window)
		low  int                    // oldest unfinished job
	)
	finish := func(seq int) {
		mu.Lock()
		done[seq%window] = true
		n := 0
		for done[low%window] {
			done[low%window] = false
			low++
			n++
		}
		mu.Unlock()
		for range n {
			<-tokens
		}
	}

	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := newWorker()
			for sj := range ch {
				if ctx.Err() == nil {
					if err := do(ctx, w, sj.job); err != nil {
						cancel(err)
					}
				}
				finish(sj.seq)
			}
		}()
	}

	seq := 0
	for j := range jobs {
		select {
		case tokens <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case ch <- seqJob{seq, j}:
			seq++
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(ch)
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// Grow returns s resized to n elements, reusing its array when it is large
// enough (the contents are then stale): for a worker's scratch buffers.
func Grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}
