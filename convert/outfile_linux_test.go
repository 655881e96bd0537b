//go:build linux && (amd64 || arm64)

package convert

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// newMapped creates a file of size bytes with its blocks allocated and
// returns it with its writer, which must be a mappedFile (the test is
// skipped where the file system allocates no blocks).
func newMapped(t *testing.T, size int64) (*os.File, *mappedFile) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "out.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	allocated, err := allocate(f, size)
	if err != nil {
		t.Fatal(err)
	}
	if !allocated {
		t.Skip("no fallocate on this file system")
	}
	m := newMappedFile(f, size)
	if m == nil {
		t.Fatal("an allocated file cannot be mapped")
	}
	return f, m
}

// newSparseMapped creates a sparse file of size bytes in dir and returns
// it with its writer, which must be a sparse mappedFile (the test is
// skipped on a kernel without MADV_POPULATE_WRITE).
func newSparseMapped(t *testing.T, dir string, size int64) (*os.File, *mappedFile) {
	t.Helper()
	f, err := os.CreateTemp(dir, "qconv-test-*.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		os.Remove(f.Name())
	})
	m, err := newSparseMappedFile(f, size)
	if err != nil {
		t.Fatal(err)
	}
	if m == nil {
		t.Skip("no MADV_POPULATE_WRITE here")
	}
	return f, m
}

// mappedKinds are the two kinds of mapped file: allocated first, and
// sparse with pages allocated by the writes.
var mappedKinds = []struct {
	name string
	make func(t *testing.T, size int64) (*os.File, *mappedFile)
}{
	{"allocated", newMapped},
	{"sparse", func(t *testing.T, size int64) (*os.File, *mappedFile) { return newSparseMapped(t, t.TempDir(), size) }},
}

// QCONV_TEST_MAPPED=1 writes every output through a mapping, whatever the
// file system, so that all of the package's tests run on that path:
//
//	QCONV_TEST_MAPPED=1 go test ./convert/...
func init() {
	if os.Getenv("QCONV_TEST_MAPPED") == "1" {
		mapWrites = func(*os.File) bool { return true }
	}
}

// forceMapped makes the test's outputs be written through mappings.
func forceMapped(t *testing.T) {
	old := mapWrites
	mapWrites = func(*os.File) bool { return true }
	t.Cleanup(func() { mapWrites = old })
}

// TestGoldenMapped: outputs written through a mapping are byte for byte
// those of bitsandbytes, with one and with several workers.
func TestGoldenMapped(t *testing.T) {
	forceMapped(t)
	convertGoldenModels(t)
}

// TestMapWritesTmpfs: outputs on a tmpfs are mapped, elsewhere written
// with pwrite (where /dev/shm is a tmpfs and the test's directory not).
func TestMapWritesTmpfs(t *testing.T) {
	if os.Getenv("QCONV_TEST_MAPPED") == "1" {
		t.Skip("QCONV_TEST_MAPPED maps every output")
	}
	for _, c := range []struct {
		dir  string
		want bool
	}{{"/dev/shm", true}, {t.TempDir(), false}} {
		f, err := os.CreateTemp(c.dir, "qconv-test-")
		if err != nil {
			t.Logf("%s: %v", c.dir, err)
			continue
		}
		var st syscall.Statfs_t
		if err := syscall.Fstatfs(int(f.Fd()), &st); err == nil && (st.Type == tmpfsMagic) == c.want {
			if got := mapWrites(f); got != c.want {
				t.Errorf("%s: mapWrites %v, want %v", c.dir, got, c.want)
			}
		}
		f.Close()
		os.Remove(f.Name())
	}
}

// mapped counts m's chunks that are mapped.
func (m *mappedFile) mapped() int {
	n := 0
	for k := range m.chunks {
		if m.chunks[k].resident.Load() {
			n++
		}
	}
	return n
}

// TestMappedFileParallel: writers copying disjoint pieces, across chunk
// boundaries and in random order, into one mapped file write exactly the
// file's bytes; complete chunks are unmapped as soon as they are written,
// and the rest by close.
func TestMappedFileParallel(t *testing.T) {
	for _, k := range mappedKinds {
		t.Run(k.name, func(t *testing.T) { testMappedFileParallel(t, k.make) })
	}
}

func testMappedFileParallel(t *testing.T, newMapped func(*testing.T, int64) (*os.File, *mappedFile)) {
	const size = 2*mapChunk + mapChunk/2 + 3
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	type piece struct{ off, n int64 }
	var pieces []piece
	for off := int64(0); off < size; {
		n := min(1+rng.Int64N(1<<20), size-off)
		pieces = append(pieces, piece{off, n})
		off += n
	}
	rng.Shuffle(len(pieces), func(i, j int) { pieces[i], pieces[j] = pieces[j], pieces[i] })
	f, m := newMapped(t, size)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for w := range errs {
		wg.Go(func() {
			for i := w; i < len(pieces); i += len(errs) {
				p := pieces[i]
				n, err := m.WriteAt(want[p.off:p.off+p.n], p.off)
				if err == nil && int64(n) != p.n {
					err = errors.New("short write")
				}
				if err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if n := m.mapped(); n > 1 {
		t.Errorf("%d chunks still mapped after every byte was written, want at most the last, partial one", n)
	}
	if err := m.close(); err != nil {
		t.Fatal(err)
	}
	if n := m.mapped(); n != 0 {
		t.Errorf("%d chunks mapped after close", n)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("file differs from what was written")
	}
}

// TestMappedFileGrow: a file created short (placeEarly's files) and grown
// while written takes writes up to its new size through the mapping, and
// writes past its size through pwrite (which extends the file as before).
func TestMappedFileGrow(t *testing.T) {
	for _, k := range mappedKinds {
		t.Run(k.name, func(t *testing.T) { testMappedFileGrow(t, k.make) })
	}
}

func testMappedFileGrow(t *testing.T, newMapped func(*testing.T, int64) (*os.File, *mappedFile)) {
	const short, long = mapChunk - 100, mapChunk + 100
	f, m := newMapped(t, short)
	if _, err := m.WriteAt([]byte("head"), 0); err != nil {
		t.Fatal(err)
	}
	if err := m.grow(long); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAt([]byte("across"), mapChunk-3); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAt([]byte("past"), long); err != nil {
		t.Fatal(err)
	}
	if err := m.close(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, long+4)
	copy(want, "head")
	copy(want[mapChunk-3:], "across")
	copy(want[long:], "past")
	if !bytes.Equal(got, want) {
		t.Errorf("file of %d bytes differs from the %d written", len(got), len(want))
	}
}

// TestMappedFileFault: a write through the mapping that faults (here: the
// file was cut short behind the writer's back, so the page lies past its
// end, SIGBUS, as an I/O error reading a page in would be) is an error
// naming the file, not a crash, and the writer can still be closed.
func TestMappedFileFault(t *testing.T) {
	f, m := newMapped(t, 3*4096)
	if _, err := m.WriteAt([]byte("ok"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	m.populate.Store(false) // the copy itself must fault
	_, err := m.WriteAt([]byte("lost"), 2*4096)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), f.Name()) {
		t.Fatalf("write into a page past the end of the file: %v, want EIO naming %s", err, f.Name())
	}
	if err := m.close(); err != nil {
		t.Fatal(err)
	}
}

// TestPwriteWithoutFallocate: a file whose blocks cannot be allocated and
// that is not mapped is written with pwrite.
func TestPwriteWithoutFallocate(t *testing.T) {
	if os.Getenv("QCONV_TEST_MAPPED") == "1" {
		t.Skip("QCONV_TEST_MAPPED maps every output")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := newFileWriter(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := w.(pwriter); !ok {
		t.Errorf("an empty file on a file system that is not mapped is written with %T, want pwrite", w)
	}
}

// noAllocateAhead keeps allocateAhead from running in this test.
func noAllocateAhead(t *testing.T) {
	old := allocateAheadOn
	allocateAheadOn = false
	t.Cleanup(func() { allocateAheadOn = old })
}

// allocatedBytes returns the bytes of f's blocks.
func allocatedBytes(t *testing.T, f *os.File) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestTmpfsSparse: an output on a tmpfs is a sparse mapped file, whose
// pages are not allocated before newFileWriter returns (fallocate takes
// 0.74 s for 3.9 GB in one thread while every worker would wait); a write
// allocates its pages where allocateAhead has not (here: it is off).
func TestTmpfsSparse(t *testing.T) {
	noAllocateAhead(t)
	f, err := os.CreateTemp("/dev/shm", "qconv-test-")
	if err != nil {
		t.Skip(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if !mapWrites(f) {
		t.Skip("/dev/shm is not a tmpfs")
	}
	const size = 8 * mapChunk
	w, err := newFileWriter(f, size)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := w.(*mappedFile)
	if !ok || !m.sparse {
		t.Skipf("written with %T (no MADV_POPULATE_WRITE?)", w)
	}
	allocated := func() int64 { return allocatedBytes(t, f) }
	if a := allocated(); a >= mapChunk {
		t.Errorf("%d bytes allocated before any write, want at most the header's page", a)
	}
	if _, err := w.WriteAt(bytes.Repeat([]byte{7}, 2*mapChunk), 3*mapChunk); err != nil {
		t.Fatal(err)
	}
	if a := allocated(); a < 2*mapChunk || a >= 3*mapChunk {
		t.Errorf("%d bytes allocated after writing %d, want those and the header's page", a, 2*mapChunk)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
}

// TestSparseNoRoom: a sparse file larger than the free space of its file
// system is refused at once with ENOSPC naming it, as fallocate would.
func TestSparseNoRoom(t *testing.T) {
	dir := t.TempDir()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "big.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := newSparseMappedFile(f, int64(st.Bavail*uint64(st.Bsize))+1<<30)
	if m != nil || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), f.Name()) {
		t.Fatalf("file larger than the free space: %v, %v; want ENOSPC naming %s", m, err, f.Name())
	}
}

// TestSparseFull: a write into a sparse file whose file system has filled
// up behind it (a small tmpfs, mounted where the test may) is an ENOSPC
// error naming the file, not a SIGBUS.
func TestSparseFull(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) }) // after the file's cleanup closes it
	noAllocateAhead(t)
	f, m := newSparseMapped(t, dir, 768<<10)
	if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, 512<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := m.WriteAt(make([]byte, 700<<10), 4096)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), f.Name()) {
		t.Fatalf("write into a full tmpfs: %v, want ENOSPC naming %s", err, f.Name())
	}
	if err := m.close(); err != nil {
		t.Fatal(err)
	}
}

// TestAllocateAhead: a sparse file's pages are allocated in the
// background, all of them (over several steps), and close waits for that
// to stop.
func TestAllocateAhead(t *testing.T) {
	dir := "/dev/shm"
	if _, err := os.Stat(dir); err != nil {
		dir = t.TempDir()
	}
	const size = 3*allocateStep + 5
	f, m := newSparseMapped(t, dir, size)
	if m.aheadDone == nil {
		t.Fatal("no allocateAhead for a sparse file")
	}
	<-m.aheadDone
	if a := allocatedBytes(t, f); a < size {
		t.Errorf("%d bytes allocated by allocateAhead, want the file's %d", a, int64(size))
	}
	if _, err := m.WriteAt([]byte("tail"), size-4); err != nil {
		t.Fatal(err)
	}
	if err := m.close(); err != nil {
		t.Fatal(err)
	}
	if err := m.close(); err != nil { // (run's cleanup may close again)
		t.Fatal(err)
	}
}
