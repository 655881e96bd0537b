package audit

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"
)

// Progress of a deep audit ends at the tensor bytes of the checkpoint,
// however many deep rules read each tensor, and never goes past it.
func TestDeepProgress(t *testing.T) {
	path := filepath.Join("..", "testdata", "golden", "models", "tiny-llama-bf16")
	var last, total, calls int64
	_, err := RunContext(context.Background(), []string{path}, Options{Rules: deepTestRules(), Deep: true, Progress: func(d, tot int64) {
		if d < last || d > tot {
			t.Errorf("progress %d / %d after %d", d, tot, last)
		}
		last, total, calls = d, tot, calls+1
	}})
	if err != nil {
		t.Fatal(err)
	}
	// tiny-llama-bf16 holds 1000704 bytes of tensor data (half of the
	// total_size 2001408 of its f32 twin's index).
	if last != 1000704 || total != 1000704 || calls < 2 {
		t.Errorf("progress ended at %d / %d after %d calls, want 1000704 / 1000704", last, total, calls)
	}
}

// With several paths the progress runs over all of them once.
func TestDeepProgressPaths(t *testing.T) {
	path := filepath.Join("..", "testdata", "golden", "models", "tiny-llama-bf16")
	var last, total int64
	_, err := RunContext(context.Background(), []string{path, "no-such-path", path}, Options{Rules: deepTestRules(), Deep: true, Progress: func(d, tot int64) {
		if d < last || d > tot {
			t.Errorf("progress %d / %d after %d", d, tot, last)
		}
		last, total = d, tot
	}})
	if err != nil {
		t.Fatal(err)
	}
	if last != 2*1000704 || total != 2*1000704 {
		t.Errorf("progress ended at %d / %d, want %d", last, total, 2*1000704)
	}
}

// A cancelled context stops a deep audit with the context's error.
func TestDeepCancel(t *testing.T) {
	path := filepath.Join("..", "testdata", "golden", "models", "tiny-llama-bf16")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := RunContext(ctx, []string{path}, Options{Rules: deepTestRules(), Deep: true}); !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
}

// deepTestRules are two deep rules that read every byte of every tensor
// and one header-only rule.
func deepTestRules() []*Rule {
	read := func(p *Pass) {
		for _, t := range p.Checkpoint.Tensors() {
			io.Copy(io.Discard, t.Section())
		}
	}
	return []*Rule{
		{ID: "DEEP901", Title: "a", Severity: Info, Deep: true, Run: read},
		{ID: "DEEP902", Title: "b", Severity: Info, Deep: true, Run: read},
		{ID: "ST901", Title: "c", Severity: Info, Run: func(*Pass) {}},
	}
}
