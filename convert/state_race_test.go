package convert

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
)

// Two processes of a partitioned run started at the same moment with
// different arguments race to create the work directory's plan state. At
// most one of them may go on: the other must see the disagreement. (With a
// rename-based publish both could read back their own bytes and go on with
// different plans.)
func TestWorkDirCreateRace(t *testing.T) {
	base := t.TempDir()
	for i := range 200 {
		dst := filepath.Join(base, fmt.Sprintf("out%d", i))
		a := &planState{Version: 1, Settings: map[string]string{"quant-type": "nf4"}}
		b := &planState{Version: 1, Settings: map[string]string{"quant-type": "fp4"}}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for k, st := range []*planState{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[k] = openWorkDir(dst, st, nil, false, nil)
			}()
		}
		wg.Wait()
		if errs[0] == nil && errs[1] == nil {
			t.Fatalf("round %d: both runs with different arguments accepted the same work directory", i)
		}
		if errs[0] != nil && errs[1] != nil {
			t.Fatalf("round %d: both refused: %v / %v", i, errs[0], errs[1])
		}
	}
	// Same arguments: both go on.
	dst := filepath.Join(base, "same")
	st := &planState{Version: 1, Settings: map[string]string{"quant-type": "nf4"}}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for k := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[k] = openWorkDir(dst, st, nil, false, nil)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("same arguments refused: %v / %v", errs[0], errs[1])
	}
}
