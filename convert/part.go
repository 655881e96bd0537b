package convert

import "fmt"

// A Part selects one part of a conversion split across processes or
// machines: part Index of Count (0-based) writes the output weight files
// whose position in the plan is congruent to Index modulo Count. The zero
// value (Count 0) selects the whole conversion.
type Part struct {
	Index, Count int
}

func (pt Part) check() error {
	if pt.Count == 0 && pt.Index == 0 {
		return nil
	}
	if pt.Count < 1 || pt.Index < 0 || pt.Index >= pt.Count {
		return fmt.Errorf("convert: invalid part %d/%d (want I/N with 0 <= I < N)", pt.Index, pt.Count)
	}
	return nil
}

// Whole reports whether pt selects the whole conversion (Count 0 or 1).
func (pt Part) Whole() bool { return pt.Count <= 1 }

// has reports whether output file i belongs to the part.
func (pt Part) has(i int) bool { return pt.Whole() || i%pt.Count == pt.Index }

// String returns "I/N".
func (pt Part) String() string { return fmt.Sprintf("%d/%d", pt.Index, pt.Count) }
