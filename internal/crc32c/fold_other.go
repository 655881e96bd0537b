//go:build !amd64 || purego

package crc32c

// haveFold and useFold are false: this build has no fold kernel.
var haveFold, useFold = false, false

// fold is never called in this build (useFold is false).
func fold(acc *[foldBytes]byte, b []byte, state uint32) {
	panic("crc32c: no fold kernel in this build")
}
