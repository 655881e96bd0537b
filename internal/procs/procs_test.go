package procs

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestRaise(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(before) })

	t.Setenv("GOMAXPROCS", "")
	for range 2 { // twice: Raise sets, it does not add up
		if got := Raise(); got != CPUs()+Spare {
			t.Errorf("Raise() = %d, want %d", got, CPUs()+Spare)
		}
		if got := runtime.GOMAXPROCS(0); got != CPUs()+Spare {
			t.Errorf("GOMAXPROCS after Raise = %d, want %d", got, CPUs()+Spare)
		}
	}

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

// TestCPUsFollowsEnvironment runs this test binary with GOMAXPROCS=3
// (TestHelperCPUs prints CPUs() there): CPUs is the runtime's value at
// start, which follows the environment, and not runtime.NumCPU.
func TestCPUsFollowsEnvironment(t *testing.T) {
	if os.Getenv("QCONV_PROCS_HELPER") != "" {
		t.Skip("helper process")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCPUs$", "-test.v")
	cmd.Env = append(os.Environ(), "GOMAXPROCS=3", "QCONV_PROCS_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	_, after, ok := strings.Cut(string(out), "CPUs=")
	if !ok {
		t.Fatalf("helper printed no CPUs=:\n%s", out)
	}
	n, err := strconv.Atoi(strings.Fields(after)[0])
	if err != nil || n != 3 {
		t.Fatalf("with GOMAXPROCS=3, CPUs() = %q, want 3\n%s", strings.Fields(after)[0], out)
	}
}

func TestHelperCPUs(t *testing.T) {
	if os.Getenv("QCONV_PROCS_HELPER") == "" {
		t.Skip("only as TestCPUsFollowsEnvironment's helper")
	}
	Raise()
	t.Logf("CPUs=%d", CPUs())
}
