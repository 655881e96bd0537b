package procs

import (
	"runtime"
	"testing"
)

func TestRaise(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })

	t.Setenv("GOMAXPROCS", "")
	if got := Raise(); got != before+Spare {
		t.Errorf("Raise() = %d, want %d", got, before+Spare)
	}
	if got := runtime.GOMAXPROCS(0); got != before+Spare {
		t.Errorf("GOMAXPROCS after Raise = %d, want %d", got, before+Spare)
	}
	runtime.GOMAXPROCS(before)

	// The user's setting stays.
	t.Setenv("GOMAXPROCS", "1")
	runtime.GOMAXPROCS(1)
	if got := Raise(); got != 1 {
		t.Errorf("with GOMAXPROCS=1 in the environment, Raise() = %d, want 1", got)
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("with GOMAXPROCS=1 in the environment, GOMAXPROCS after Raise = %d, want 1", got)
	}
}
