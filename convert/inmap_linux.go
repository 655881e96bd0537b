//go:build linux && (amd64 || arm64)

package convert

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Reading the input through memory mappings.
//
// pread copies every piece of a tensor out of the page cache into the
// worker's buffer before the kernels read it. Through a read-only shared
// mapping of the input file the kernels read the page cache itself, one
// copy fewer of every input byte.
//
//   - Each input file is mapped once, whole, when a job first reads from
//     it, and unmapped when the run ends. (mmap and munmap take the
//     process's mmap lock exclusively; a mapping per job contended for it
//     on 16 cores and was slower than pread.)
//   - A view of a piece faults its pages in with one MADV_POPULATE_READ,
//     which reports a file shorter than its header or a read error as an
//     error instead of a fault.
//   - When the worker moves on, MADV_DONTNEED drops the view's pages from
//     the process (they stay in the page cache), so the resident memory
//     is what the buffer's was.
//   - A file truncated by another process after its pages were populated
//     would fault on access (SIGBUS): jobs that read through a mapping run
//     with debug.SetPanicOnFault, and guardInput turns the fault into an
//     error naming the file.
//   - Without MADV_POPULATE_READ (Linux before 5.14) or where mmap fails,
//     reads use pread.

// madvPopulateRead is MADV_POPULATE_READ (Linux 5.14), which the syscall
// package does not define.
const madvPopulateRead = 22

// inputMaps holds the read-only mappings of a run's input files.
type inputMaps struct {
	disabled atomic.Bool // no MADV_POPULATE_READ here: pread from now on
	mu       sync.Mutex
	files    map[string]*inputMap // by path
}

type inputMap struct {
	once sync.Once
	mem  []byte // nil: not mapped
}

func newInputMaps() *inputMaps { return &inputMaps{files: make(map[string]*inputMap)} }

// mapping returns the mapping of the file open as f, of the given size,
// mapping it on first use; nil where it cannot be mapped.
func (ms *inputMaps) mapping(path string, size int64, conn func() (syscall.RawConn, error)) []byte {
	ms.mu.Lock()
	m := ms.files[path]
	if m == nil {
		m = new(inputMap)
		ms.files[path] = m
	}
	ms.mu.Unlock()
	m.once.Do(func() {
		if size <= 0 || int64(int(size)) != size {
			return
		}
		rc, err := conn()
		if err != nil {
			return
		}
		rc.Control(func(fd uintptr) {
			mem, err := syscall.Mmap(int(fd), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
			if err == nil {
				m.mem = mem
			}
		})
	})
	return m.mem
}

// viewAlign is the alignment, in the address space, of the ranges that a
// view populates and drops: 2 MiB, the span of a page table, beyond which
// the kernel's fault-around (which maps the pages next to a faulting one)
// never reaches. So dropping a view's range also drops every page that a
// fault inside it mapped, and nothing stays mapped after the run has
// moved on.
const viewAlign = 2 << 20

// view returns bytes [off, off+n) of mem with their pages faulted in. It
// populates the viewAlign-aligned range around them and records it in w,
// so that the worker's next reads from that range need no system call;
// a read outside it drops it first (unview). A view's two system calls
// (populate, then drop) and the drop's TLB flush are so paid once per
// 2 MiB. ok is false where the caller must pread instead.
func (ms *inputMaps) view(w *worker, mem []byte, off, n int64) (b []byte, ok bool, err error) {
	if ms.disabled.Load() || mem == nil || off < 0 || n < 0 || off+n > int64(len(mem)) {
		unview(w)
		return nil, false, nil
	}
	if w.viewIn(mem, off, n) {
		return mem[off : off+n], true, nil
	}
	unview(w)
	if n == 0 {
		return mem[off:off], true, nil
	}
	base := int64(uintptr(unsafe.Pointer(&mem[0])))
	lo := max((base+off)&^(viewAlign-1)-base, 0)
	hi := min((base+off+n+viewAlign-1)&^(viewAlign-1)-base, int64(len(mem)))
	if err := syscall.Madvise(mem[lo:hi], madvPopulateRead); err != nil {
		if errors.Is(err, syscall.EINVAL) { // an old kernel
			ms.disabled.Store(true)
			return nil, false, nil
		}
		return nil, true, fmt.Errorf("could not be read through its memory mapping (%w): the file is shorter than its header says, or a read failed", err)
	}
	w.view, w.viewAt = mem[lo:hi], lo
	return mem[off : off+n], true, nil
}

// viewIn reports whether bytes [off, off+n) of mem lie in w's view.
func (w *worker) viewIn(mem []byte, off, n int64) bool {
	return len(w.view) > 0 && unsafe.SliceData(w.view) == unsafe.SliceData(mem[w.viewAt:]) &&
		off >= w.viewAt && off+n <= w.viewAt+int64(len(w.view))
}

// unview drops the pages of w's last view from the process (advisory:
// they stay in the page cache, and a failure changes nothing read).
func unview(w *worker) {
	if len(w.view) > 0 {
		syscall.Madvise(w.view, syscall.MADV_DONTNEED)
	}
	w.view = nil
}

// close unmaps every input file.
func (ms *inputMaps) close() {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for path, m := range ms.files {
		m.once.Do(func() {}) // no mapping made after this
		if m.mem != nil {
			syscall.Munmap(m.mem)
			m.mem = nil
		}
		delete(ms.files, path)
	}
}
