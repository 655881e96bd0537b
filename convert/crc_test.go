package convert

import (
	"context"
	"encoding/json"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCRCRecorder(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	data := make([]byte, 100_000)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	want := crc32.Checksum(data, castagnoli)
	// Pieces of random sizes (some empty), recorded in random order.
	cuts := []int{0}
	for at := 0; at < len(data); {
		at = min(len(data), at+rng.IntN(5000))
		cuts = append(cuts, at)
	}
	var rec crcRecorder
	for _, i := range rng.Perm(len(cuts) - 1) {
		rec.add(int64(cuts[i]), data[cuts[i]:cuts[i+1]])
	}
	if got, ok := rec.sum(int64(len(data))); !ok || got != want {
		t.Errorf("sum: %08x %v, want %08x true", got, ok, want)
	}
	if _, ok := rec.sum(int64(len(data)) + 1); ok {
		t.Error("sum of a longer file: ok")
	}
	// A gap and an overlap are not covered exactly.
	var gap crcRecorder
	gap.add(0, data[:10])
	gap.add(11, data[11:20])
	if _, ok := gap.sum(20); ok {
		t.Error("gap: ok")
	}
	var overlap crcRecorder
	overlap.add(0, data[:10])
	overlap.add(5, data[5:20])
	if _, ok := overlap.sum(20); ok {
		t.Error("overlap: ok")
	}
}

// TestDoneMarkerCRC checks the CRC-32C that the done markers of a
// partitioned run record, combined from the written pieces, against the
// files read back.
func TestDoneMarkerCRC(t *testing.T) {
	src := writeSynth(t, boundaryTensors(), 100_000, "")
	dst := filepath.Join(t.TempDir(), "out")
	o := Options{Workers: 3, MaxShardSize: 60_000, jobElements: testJobElems, Part: Part{Index: 0, Count: 2}}
	if _, err := Convert(context.Background(), src, dst, o); err != nil {
		t.Fatal(err)
	}
	work, err := workDirFor(dst)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(work)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), doneSuffix)
		if !ok {
			continue
		}
		name = strings.TrimPrefix(name, ".")
		b, err := os.ReadFile(filepath.Join(work, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		var d doneState
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(work, name))
		if err != nil {
			t.Fatal(err)
		}
		size, crc := int64(len(data)), crc32.Checksum(data, castagnoli)
		if d.Size != size || d.CRC32C != crc {
			t.Errorf("%s: marker says %d bytes, CRC %08x; the file has %d, %08x", name, d.Size, d.CRC32C, size, crc)
		}
		n++
	}
	if n < 2 {
		t.Errorf("%d done markers, want at least 2", n)
	}
}
