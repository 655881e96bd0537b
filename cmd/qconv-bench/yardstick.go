package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// The yardsticks measure what the host itself can do, in child processes
// of the benchmark (so that their rusage is their own), with the same
// access pattern as qconv convert:
//
//   - read: n goroutines pread every .safetensors file of the input, in
//     pieces of readChunk bytes (qconv's sub-chunk of bf16 elements)
//     handed out in order from a shared counter, into a buffer of their
//     own. With the page cache warm this is the rate at which the host
//     copies the input out of it.
//   - write: n goroutines pwrite a given number of bytes, in pieces of
//     writeChunk bytes (the packed output of one of qconv's jobs), into one
//     file created at its final size with its blocks allocated (or into n
//     files, one per goroutine), asking the kernel to start writing back
//     each piece as it is written, then fsync. This is the output side of
//     qconv convert without any computing. The mapped variant copies the
//     pieces into a shared mapping of the one file instead (page faults
//     take no file-wide lock), as qconv convert writes on Linux.

// readChunk and writeChunk are the sizes of one pread and one pwrite.
const (
	readChunk  = 256 << 10
	writeChunk = 512 << 10
)

// piece is a range of one file.
type piece struct {
	f      *os.File
	off, n int64
}

// parallel runs do for every index below n on workers goroutines, handing
// out indices in order; the first error is returned.
func parallel(workers int, n int64, do func(w int, i int64) error) error {
	var next atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				if err := do(w, i); err != nil {
					errs[w] = err
					next.Store(n)
					return
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// childRead reads every .safetensors file of dir with n goroutines and
// prints the bytes read and the time taken.
func childRead(dir string, n int, stdout io.Writer) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var pieces []piece
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".safetensors" {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		for off := int64(0); off < fi.Size(); off += readChunk {
			pieces = append(pieces, piece{f, off, min(readChunk, fi.Size()-off)})
		}
	}
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, readChunk)
	}
	var total atomic.Int64
	start := time.Now()
	err = parallel(n, int64(len(pieces)), func(w int, i int64) error {
		p := pieces[i]
		got, err := p.f.ReadAt(bufs[w][:p.n], p.off)
		total.Add(int64(got))
		if err != nil && !(errors.Is(err, io.EOF) && int64(got) == p.n) {
			return fmt.Errorf("reading %s: %w", p.f.Name(), err)
		}
		return nil
	})
	fmt.Fprintf(stdout, "read %d bytes with %d readers in %.3fs\n", total.Load(), n, time.Since(start).Seconds())
	return err
}

// childWrite writes size bytes with n goroutines into dir/out.bin (or, with
// files, into dir/out-K.bin, one file per goroutine; with mapped, through a
// shared mapping of dir/out.bin) and fsyncs them.
func childWrite(dir string, n int, size int64, files, mapped bool, stdout io.Writer) error {
	if files && mapped {
		return errors.New("the mapped write yardstick writes one file")
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	nf := 1
	if files {
		nf = n
	}
	var fs []*os.File
	var pieces []piece
	per := (size + int64(nf) - 1) / int64(nf)
	for k := range nf {
		name := "out.bin"
		if files {
			name = fmt.Sprintf("out-%d.bin", k)
		}
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
		if err != nil {
			return err
		}
		defer f.Close()
		fs = append(fs, f)
		fsize := min(per, size-int64(k)*per)
		if err := allocate(f, fsize); err != nil {
			return err
		}
		for off := int64(0); off < fsize; off += writeChunk {
			pieces = append(pieces, piece{f, off, min(writeChunk, fsize-off)})
		}
	}
	if files {
		// Goroutine w writes the pieces of file w: interleave them so that
		// the shared counter hands out one piece of each file in turn.
		perFile := make([][]piece, nf)
		for _, p := range pieces {
			for k, f := range fs {
				if p.f == f {
					perFile[k] = append(perFile[k], p)
				}
			}
		}
		pieces = pieces[:0]
		for i := 0; ; i++ {
			added := false
			for k := range perFile {
				if i < len(perFile[k]) {
					pieces = append(pieces, perFile[k][i])
					added = true
				}
			}
			if !added {
				break
			}
		}
	}
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, writeChunk)
		for j := range bufs[i] {
			bufs[i][j] = byte(i*131 + j*7 + 1)
		}
	}
	start := time.Now()
	var mem []byte
	if mapped {
		var err error
		if mem, err = mapFile(fs[0], size); err != nil {
			return err
		}
	}
	err := parallel(n, int64(len(pieces)), func(w int, i int64) error {
		p := pieces[i]
		if mapped {
			copyMapped(mem[p.off:p.off+p.n], bufs[w][:p.n])
		} else if _, err := p.f.WriteAt(bufs[w][:p.n], p.off); err != nil {
			return err
		}
		startWriteback(p.f, p.off, p.n)
		return nil
	})
	if mapped {
		if uerr := unmapFile(mem); err == nil {
			err = uerr
		}
	}
	if err != nil {
		return err
	}
	wrote := time.Since(start)
	for _, f := range fs {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	total := time.Since(start)
	fmt.Fprintf(stdout, "wrote %d bytes into %d files with %d writers in %.3fs (%.3fs of it fsync)\n", size, nf, n, total.Seconds(), (total - wrote).Seconds())
	return nil
}
