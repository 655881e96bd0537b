package crc32c

import (
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// TestChecksum holds Checksum to hash/crc32 on lengths around every
// boundary of the fold (256-byte steps, the 1 KiB threshold), at odd
// offsets, on random bytes, all-zero and all-one bytes, and with the fold
// turned off.
func TestChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 70_000)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	var lengths []int
	for _, base := range []int{0, 256, 512, 768, 1024, 1280, 2048, 4096, 65536} {
		for d := -3; d <= 3; d++ {
			if n := base + d; n >= 0 {
				lengths = append(lengths, n)
			}
		}
	}
	for range 300 {
		lengths = append(lengths, rng.IntN(len(buf)-8))
	}
	defer func(v bool) { useFold = v }(useFold)
	for _, fold := range []bool{true, false} {
		if fold && !haveFold {
			continue // no fold kernel on this CPU or build: only hash/crc32
		}
		useFold = fold
		for _, n := range lengths {
			for _, off := range []int{0, 1, 7} {
				b := buf[off : off+n]
				if got, want := Checksum(b), crc32.Checksum(b, Table); got != want {
					t.Fatalf("fold %v: %d bytes at offset %d: %08x, want %08x", fold, n, off, got, want)
				}
			}
		}
		for _, v := range []byte{0, 0xff} {
			b := make([]byte, 5000)
			for i := range b {
				b[i] = v
			}
			if got, want := Checksum(b), crc32.Checksum(b, Table); got != want {
				t.Fatalf("fold %v: 5000 bytes of %#x: %08x, want %08x", fold, v, got, want)
			}
		}
	}
}

func TestCombine(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		a := make([]byte, rng.IntN(3000))
		b := make([]byte, rng.IntN(3000))
		for i := range a {
			a[i] = byte(rng.Uint32())
		}
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		want := crc32.Checksum(append(a[:len(a):len(a)], b...), Table)
		got := Combine(crc32.Checksum(a, Table), crc32.Checksum(b, Table), int64(len(b)))
		if got != want {
			t.Fatalf("combine of %d and %d bytes: %08x, want %08x", len(a), len(b), got, want)
		}
	}
	// Long runs of zeros exercise the high powers of x.
	zeros := make([]byte, 5<<20)
	head := []byte("qconv")
	want := crc32.Checksum(append(head, zeros...), Table)
	if got := Combine(crc32.Checksum(head, Table), crc32.Checksum(zeros, Table), int64(len(zeros))); got != want {
		t.Errorf("combine with 5 MiB of zeros: %08x, want %08x", got, want)
	}
}

// BenchmarkChecksum compares Checksum with hash/crc32 on a piece of the
// size convert checksums (a job's 512 KiB of codes).
func BenchmarkChecksum(b *testing.B) {
	buf := make([]byte, 512<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for _, fold := range []bool{true, false} {
		b.Run(fmt.Sprintf("fold=%v", fold), func(b *testing.B) {
			if fold && !haveFold {
				b.Skip("no fold kernel on this CPU or build")
			}
			defer func(v bool) { useFold = v }(useFold)
			useFold = fold
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				Checksum(buf)
			}
		})
	}
}
