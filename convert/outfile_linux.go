//go:build linux && (amd64 || arm64)

package convert

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// allocate gives the new file f the size size with its blocks allocated
// (fallocate), which makes writing it cheaper than into a sparse file,
// reports a full disk at once, and makes writing it through a shared
// mapping safe (see mappedFile). File systems without fallocate get a
// sparse file (truncate), and allocated is false.
func allocate(f *os.File, size int64) (allocated bool, err error) {
	if size == 0 {
		return false, f.Truncate(0) // (fallocate refuses an empty range)
	}
	var ferr error
	if err := control(f, func(fd int) {
		for {
			ferr = syscall.Fallocate(fd, 0, 0, size)
			if ferr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return false, err
	}
	if errors.Is(ferr, syscall.EOPNOTSUPP) || errors.Is(ferr, syscall.ENOSYS) {
		return false, f.Truncate(size)
	}
	if ferr != nil {
		return false, &os.PathError{Op: "fallocate", Path: f.Name(), Err: ferr}
	}
	return true, nil
}

// control calls fn with the descriptor of f.
func control(f *os.File, fn func(fd int)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) { fn(int(fd)) })
}

// syncFileRangeWrite is SYNC_FILE_RANGE_WRITE of sync_file_range(2).
const syncFileRangeWrite = 2

// startWriteback asks the kernel to start writing the dirty pages of f
// that lie entirely in [off, off+n) to disk, without waiting for them, so
// that the fsync that ends the file has less left to wait for. Pages
// shared with a neighbouring range that may still be written are left
// alone (writing them now would write them twice). It is advisory: errors
// are ignored, and the final fsync reports any failure to write. Pages
// written through a mapping are dirty in the page cache like written
// ones, so this works the same for both.
func startWriteback(f *os.File, off, n int64) {
	const page = 4096
	lo := (off + page - 1) &^ (page - 1)
	hi := (off + n) &^ (page - 1)
	if hi <= lo {
		return
	}
	control(f, func(fd int) {
		syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, uintptr(fd), uintptr(lo), uintptr(hi-lo), syncFileRangeWrite, 0, 0)
	})
}

// mapChunk is the size of the pieces of an output file that are mapped
// at a time (a multiple of every page size, huge pages included). Pages
// of a chunk that is partly written count in the process's RSS: with
// 8 MiB chunks a 7B conversion peaked at 110 MiB instead of 45 MiB.
const mapChunk = 2 << 20

// madvPopulateWrite is MADV_POPULATE_WRITE of madvise(2) (Linux 5.14).
const madvPopulateWrite = 23

// tmpfsMagic is TMPFS_MAGIC, the f_type of a tmpfs in statfs(2).
const tmpfsMagic = 0x01021994

// mapWrites reports whether output file f is written through a mapping:
// where it lies on a tmpfs. Measured on a 16-core host (13.5 GB bf16
// Llama-7B, 3.9 GB output, 16 workers; docs/benchmark.md): on tmpfs,
// where pwrite's inode lock is the limit, convert took 2.90 s with pwrite
// and 2.31 s mapped; on ext4 it took 1.84 s with pwrite and 3.94 s mapped
// (each first write to a page through a mapping costs a page_mkwrite
// with its journal work there, and the disk is the limit anyway). Tests
// set it to map on any file system.
var mapWrites = func(f *os.File) bool {
	var st syscall.Statfs_t
	var serr error
	if err := control(f, func(fd int) { serr = syscall.Fstatfs(fd, &st) }); err != nil || serr != nil {
		return false
	}
	return st.Type == tmpfsMagic
}

// newFileWriter brings the new, empty output file f to size bytes and
// returns its writer. Where mapWrites says so the file is written through
// a mapping: sparse (truncated to its size), its pages allocated by the
// writes themselves (see mappedFile), or, on a kernel without
// MADV_POPULATE_WRITE, allocated first. Elsewhere, or where the file
// cannot be mapped, its blocks are allocated (allocate) and it is written
// with pwrite.
func newFileWriter(f *os.File, size int64) (fileWriter, error) {
	mapped := mapWrites(f)
	if mapped {
		m, err := newSparseMappedFile(f, size)
		if err != nil {
			return nil, err
		}
		if m != nil {
			return m, nil
		}
	}
	allocated, err := allocate(f, size)
	if err != nil {
		return nil, err
	}
	if mapped && allocated {
		if m := newMappedFile(f, size); m != nil {
			return m, nil
		}
	}
	return pwriter{f}, nil
}

// newMappedFile returns a mappedFile of f, whose size bytes are
// allocated, or nil if f cannot be mapped.
func newMappedFile(f *os.File, size int64) *mappedFile {
	m := &mappedFile{f: f}
	m.extend(size)
	if !m.mapWhole(size) {
		return nil
	}
	m.populate.Store(true)
	return m
}

// mapWhole maps the file's first size bytes, shared and writable, in one
// mapping. One mapping, not one per chunk, because mmap and munmap take
// the process's mmap lock exclusively: with a mapping per 2 MiB chunk, 16
// workers spent 2.2 s of 21 s waiting for each other's mmap and munmap
// calls on the 16-core host (block profile, docs/benchmark.md).
func (m *mappedFile) mapWhole(size int64) bool {
	if size <= 0 || int64(int(size)) != size {
		return false
	}
	var mem []byte
	var merr error
	if err := control(m.f, func(fd int) {
		mem, merr = syscall.Mmap(fd, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	}); err != nil || merr != nil {
		return false
	}
	m.whole = mem
	return true
}

// newSparseMappedFile truncates f to size bytes and returns a sparse
// mappedFile of it, or nil (and f as it was) if f cannot be mapped or
// the kernel has no MADV_POPULATE_WRITE. It reports a file system without
// room for size bytes at once, as fallocate would.
func newSparseMappedFile(f *os.File, size int64) (*mappedFile, error) {
	if size == 0 {
		return nil, nil
	}
	m := &mappedFile{f: f, sparse: true}
	if err := m.grow(size); err != nil {
		return nil, err
	}
	if !m.mapWhole(size) {
		return nil, f.Truncate(0)
	}
	// Allocate the first page (the header's), which also tells whether
	// the kernel can populate.
	err := syscall.Madvise(m.whole[:min(size, int64(os.Getpagesize()))], madvPopulateWrite)
	if err != nil {
		m.close()
		if errors.Is(err, syscall.EINVAL) {
			return nil, f.Truncate(0)
		}
		return nil, m.populateError(err)
	}
	m.populate.Store(true)
	if allocateAheadOn {
		m.aheadStop, m.aheadDone = make(chan struct{}), make(chan struct{})
		go m.allocateAhead(size)
	}
	return m, nil
}

// allocateAheadOn starts allocateAhead for each sparse file (tests turn it
// off to see the writes allocate).
var allocateAheadOn = true

// fallocKeepSize is FALLOC_FL_KEEP_SIZE of fallocate(2): allocateAhead
// never changes the file's size (not even of a file cut short behind its
// back).
const fallocKeepSize = 1

// allocateStep is how much of a sparse file allocateAhead allocates per
// fallocate call (so that close stops it within a few milliseconds).
const allocateStep = 32 << 20

// allocateAhead allocates the pages of the sparse file's first size bytes
// in file order, a step at a time, until done or told to stop, in the
// background: the writes then find most of their pages allocated. Pages
// allocated by the workers' MADV_POPULATE_WRITE instead contend for the
// file's locks: measured on a 16-core host (13.5 GB bf16 input, 3.9 GB
// output on a tmpfs, 16 workers; docs/benchmark.md), populating
// unallocated pages took 5.3 s of the workers' CPU where one thread
// allocates the whole file in 0.74 s, and the writers, which start after
// the statistics pass, seldom catch up with it. It is advisory: a failure
// (ENOSPC) stops it, and the writes allocate what is left (reporting
// ENOSPC themselves).
func (m *mappedFile) allocateAhead(size int64) {
	defer close(m.aheadDone)
	for off := int64(0); off < size; off += allocateStep {
		select {
		case <-m.aheadStop:
			return
		default:
		}
		n := min(allocateStep, size-off)
		var ferr error
		if err := control(m.f, func(fd int) {
			for {
				ferr = syscall.Fallocate(fd, fallocKeepSize, off, n)
				if ferr != syscall.EINTR {
					return
				}
			}
		}); err != nil || ferr != nil {
			return
		}
	}
}

// A mappedFile writes an output file through shared memory mappings of
// it (mmap MAP_SHARED), in pieces of mapChunk bytes.
//
// Why: a buffered write (pwrite) takes the file's inode lock exclusively,
// so the workers' writes into one output file run one at a time; on a
// tmpfs 16 writers into one file took ten times as long as into 16
// files. Copying into a mapping takes only shared locks (a page fault
// locks the page, not the file), so the workers write in parallel.
//
// Why it is safe:
//   - A sparse file (the usual case, on a tmpfs) is allocated by a
//     background thread (allocateAhead) while the workers run, instead
//     of by a fallocate of the whole file before any of them starts (3.9
//     GB: 0.74 s on a 16-core host with every worker waiting). Each copy
//     into it is preceded by MADV_POPULATE_WRITE, which allocates the
//     pages that thread has not reached yet and fails with an error where
//     a page cannot be had (EFAULT: the file system is full), so the copy
//     never faults for want of a page. Where the kernel has no
//     MADV_POPULATE_WRITE the file's blocks are allocated (fallocate)
//     before it is mapped instead, so that no write through the mapping
//     needs a block. Files whose blocks could not be allocated are written
//     with pwrite.
//   - Only bytes within the file's size are written through a mapping
//     (a page beyond the end of the file would fault); other writes go
//     through pwrite, with pwrite's semantics.
//   - A fault while copying (the kernel could not read the page in, an
//     I/O error) is a SIGBUS to the writing thread. copyTo sets
//     runtime/debug.SetPanicOnFault around the copy, so it is an error of
//     that write (EIO, naming the file) instead of a crash.
//   - The mapping and write(2) share the page cache, so pages written
//     either way are dirty pages of the file: sync_file_range, and the
//     fsync that finishes the file, write them and report write-back
//     errors as they do for pwrite, also after munmap.
//   - The file's first bytes, its size when the writer was made, are
//     mapped once; writes past them (a file grown at its layout by a few
//     bytes) use pwrite. The pages of a chunk of mapChunk bytes are
//     dropped from the mapping (MADV_DONTNEED, which keeps them in the
//     page cache, dirty) once all its bytes are written, so that the
//     resident mapped pages, which count in the process's RSS, stay a few
//     chunks; a page written again is faulted in again. close unmaps the
//     file before it is synced, closed and renamed.
type mappedFile struct {
	f *os.File
	// pwrite makes every write a pwrite: the blocks of a grown file could
	// not be allocated, or the writer is closed.
	pwrite   atomic.Bool
	populate atomic.Bool // madvise(MADV_POPULATE_WRITE) works here
	// sparse: the file is not allocated; the writes' MADV_POPULATE_WRITE
	// allocates its pages and must succeed.
	sparse bool
	// aheadStop tells allocateAhead (sparse files) to stop, aheadDone
	// is closed when it has; stopAhead stops it once.
	aheadStop, aheadDone chan struct{}
	stopAhead            sync.Once

	// whole maps the file's first len(whole) bytes; chunks has an entry
	// per mapChunk bytes of it. Both are set before m is shared, and
	// unmapped (nil) by close under mu.
	whole  []byte
	chunks []fileChunk

	mu   sync.RWMutex // guards size (grow), and whole against close
	size int64
}

// A fileChunk counts the bytes written into mapChunk bytes of the mapping.
type fileChunk struct {
	written  atomic.Int64
	resident atomic.Bool // pages of it may be mapped (written since dropped)
}

// grow brings the file to size bytes: a sparse file is extended (after a
// check that the file system has room), another one allocated.
func (m *mappedFile) grow(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size <= m.size {
		return nil
	}
	if m.sparse {
		if err := m.checkRoom(size - m.size); err != nil {
			return err
		}
		if err := m.f.Truncate(size); err != nil {
			return err
		}
	} else {
		allocated, err := allocate(m.f, size)
		if err != nil {
			return err
		}
		if !allocated {
			// Writes through the mapping and pwrite's meet in the page
			// cache, so writes already under way stay correct.
			m.pwrite.Store(true)
		}
	}
	m.extend(size)
	return nil
}

// extend records that the file has size bytes (m.mu held, or m not yet
// shared).
func (m *mappedFile) extend(size int64) {
	m.size = max(m.size, size)
	if m.chunks == nil {
		m.chunks = make([]fileChunk, (size+mapChunk-1)/mapChunk)
	}
}

// checkRoom reports ENOSPC where the file's file system has fewer than n
// bytes free for an unprivileged user.
func (m *mappedFile) checkRoom(n int64) error {
	var st syscall.Statfs_t
	var serr error
	if err := control(m.f, func(fd int) { serr = syscall.Fstatfs(fd, &st) }); err != nil || serr != nil {
		return nil // unknown: the writes report it
	}
	if free := st.Bavail * uint64(st.Bsize); free < uint64(n) {
		return &os.PathError{Op: "allocate", Path: m.f.Name(), Err: fmt.Errorf("%w (%d bytes needed, %d free)", syscall.ENOSPC, n, free)}
	}
	return nil
}

// populateError is the error of a sparse file's MADV_POPULATE_WRITE that
// failed: EFAULT where a page could not be allocated.
func (m *mappedFile) populateError(err error) error {
	if errors.Is(err, syscall.EFAULT) {
		err = fmt.Errorf("%w (a page of the file could not be allocated through its memory mapping)", syscall.ENOSPC)
	}
	return &os.PathError{Op: "write", Path: m.f.Name(), Err: err}
}

// WriteAt writes b at byte offset off, through the mapping where it can.
func (m *mappedFile) WriteAt(b []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.pwrite.Load() || off < 0 || off+int64(len(b)) > int64(len(m.whole)) {
		return m.f.WriteAt(b, off)
	}
	done := 0
	for done < len(b) {
		at := off + int64(done)
		k := at / mapChunk
		n := min(len(b)-done, int(mapChunk-at%mapChunk))
		c := &m.chunks[k]
		c.resident.Store(true)
		err := m.copyTo(m.whole, at, b[done:done+n])
		if err != nil {
			return done, err
		}
		if w := c.written.Add(int64(n)); w >= mapChunk && w-int64(n) < mapChunk {
			// Every byte of the chunk is written: drop its pages from
			// the mapping (advisory; errors change nothing written).
			c.resident.Store(false)
			syscall.Madvise(m.whole[k*mapChunk:(k+1)*mapChunk], syscall.MADV_DONTNEED)
		}
		done += n
	}
	return done, nil
}

// copyTo copies p into mem at byte i, turning a fault into an error.
func (m *mappedFile) copyTo(mem []byte, i int64, p []byte) (err error) {
	dst := mem[i : i+int64(len(p))]
	if m.populate.Load() && len(p) > 0 {
		// Fault the pages in, writable, in one call instead of one trap
		// per page (in a sparse file, allocating them). Failures other
		// than an old kernel's EINVAL are left to the copy, which reports
		// them, except in a sparse file, where the copy would fault.
		page := int64(os.Getpagesize())
		lo, hi := i&^(page-1), min((i+int64(len(p))+page-1)&^(page-1), int64(len(mem)))
		err := syscall.Madvise(mem[lo:hi], madvPopulateWrite)
		switch {
		case err == nil:
		case m.sparse:
			return m.populateError(err)
		case errors.Is(err, syscall.EINVAL):
			m.populate.Store(false)
		}
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if e := recover(); e != nil {
			fault, ok := e.(interface{ Addr() uintptr })
			if !ok || inSlice(p, fault.Addr()) {
				panic(e) // a fault reading p is the input's (guardInput)
			}
			err = &os.PathError{Op: "write", Path: m.f.Name(), Err: fmt.Errorf("%w (fault at %#x writing through the file's memory mapping)", syscall.EIO, fault.Addr())}
		}
	}()
	copy(dst, p)
	return nil
}

// inSlice reports whether addr lies in p's bytes.
func inSlice(p []byte, addr uintptr) bool {
	if len(p) == 0 {
		return false
	}
	lo := uintptr(unsafe.Pointer(&p[0]))
	return addr >= lo && addr-lo < uintptr(len(p))
}

// close stops allocateAhead and unmaps every chunk still mapped; later
// writes use pwrite.
func (m *mappedFile) close() error {
	m.pwrite.Store(true)
	if m.aheadStop != nil {
		m.stopAhead.Do(func() { close(m.aheadStop) })
		<-m.aheadDone // before the caller may close the descriptor
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.whole == nil {
		return nil
	}
	err := syscall.Munmap(m.whole)
	m.whole = nil
	for k := range m.chunks {
		m.chunks[k].resident.Store(false)
	}
	if err != nil {
		return &os.PathError{Op: "munmap", Path: m.f.Name(), Err: err}
	}
	return nil
}
