//go:build !unix

package convert

// peakRSS returns 0: the peak resident set size is not available here.
func peakRSS() int64 { return 0 }
