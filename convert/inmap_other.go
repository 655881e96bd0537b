//go:build !linux || !(amd64 || arm64)

package convert

import "syscall"

// inputMaps maps nothing here: reading the input through memory mappings
// is a Linux optimisation (see inmap_linux.go), and reads use pread.
type inputMaps struct{}

func newInputMaps() *inputMaps { return nil }

func (ms *inputMaps) mapping(path string, size int64, conn func() (syscall.RawConn, error)) []byte {
	return nil
}

func (ms *inputMaps) view(w *worker, mem []byte, off, n int64) ([]byte, bool, error) {
	return nil, false, nil
}

func unview(w *worker) {}

func (ms *inputMaps) close() {}
