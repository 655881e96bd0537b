//go:build !(linux && (amd64 || arm64))

package main

import "os"

func allocate(f *os.File, size int64) error { return f.Truncate(size) }

func startWriteback(*os.File, int64, int64) {}
