package dequant

// Output directory handling: a minimal version of what package convert
// does for its output (temporary directory beside the destination, rename
// at the end, copy of the small files). It should move to a shared
// package once convert exports its own.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/qconv/qconv/formats/checkpoint"
)

// checkDst refuses a destination that exists and is not an empty
// directory, or that contains the source or lies inside it.
func checkDst(ck *checkpoint.Checkpoint, dst string) error {
	if dst == "" {
		return fmt.Errorf("dequant: empty destination")
	}
	d, err := filepath.Abs(dst)
	if err != nil {
		return fmt.Errorf("dequant: %w", err)
	}
	s, err := filepath.Abs(ck.Dir)
	if err != nil {
		return fmt.Errorf("dequant: %w", err)
	}
	if r, err := filepath.EvalSymlinks(s); err == nil {
		s = r
	}
	if r, err := filepath.EvalSymlinks(d); err == nil {
		d = r
	}
	if within(s, d) || ck.Layout != checkpoint.LayoutFile && within(d, s) {
		return fmt.Errorf("dequant: destination %s overlaps the source %s", dst, ck.Path)
	}
	fi, err := os.Stat(dst)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("dequant: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("dequant: destination %s exists and is not a directory", dst)
	}
	ents, err := os.ReadDir(dst)
	if err != nil {
		return fmt.Errorf("dequant: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("dequant: destination %s is not empty", dst)
	}
	return nil
}

// within reports whether path is dir or inside it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// makeWorkDir creates the temporary directory beside dst in which the
// output is built.
func makeWorkDir(dst string) (string, error) {
	abs, err := filepath.Abs(dst)
	if err != nil {
		return "", fmt.Errorf("dequant: %w", err)
	}
	parent, base := filepath.Dir(abs), filepath.Base(abs)
	if err := os.MkdirAll(parent, 0o777); err != nil {
		return "", fmt.Errorf("dequant: %w", err)
	}
	for range 100 {
		dir := filepath.Join(parent, "."+base+".qconv-tmp-"+strconv.FormatUint(rand.Uint64()&(1<<40-1), 36))
		err := os.Mkdir(dir, 0o777)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("dequant: %w", err)
		}
		return dir, nil
	}
	return "", fmt.Errorf("dequant: cannot create a temporary directory beside %s", dst)
}

// install renames the finished output work to dst, which must not exist
// or be an empty directory, and syncs the parent directory.
func install(work, dst string) error {
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		if err := os.Remove(dst); err != nil { // fails unless empty
			return fmt.Errorf("dequant: %w", err)
		}
	}
	if err := os.Rename(work, dst); err != nil {
		return fmt.Errorf("dequant: %w", err)
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return fmt.Errorf("dequant: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("dequant: %w", err)
	}
	return nil
}

// weightExts are weight files that are not copied: the output has its own
// weights, and stale ones in another format would contradict them.
var weightExts = []string{".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".pkl", ".npz"}

// copyAux copies the files of the checkpoint directory other than weights,
// their index, config.json and hidden files (tokenizer files,
// generation_config.json, README.md, ...) into work, and returns their
// slash-separated paths.
func copyAux(ck *checkpoint.Checkpoint, work string) ([]string, error) {
	var copied []string
	err := filepath.WalkDir(ck.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(ck.Dir, path)
		if err != nil || rel == "." {
			return err
		}
		name := strings.ToLower(d.Name())
		if strings.HasPrefix(name, ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || rel == checkpoint.ConfigFileName || strings.HasSuffix(name, ".index.json") {
			return nil
		}
		for _, ext := range weightExts {
			if strings.HasSuffix(name, ext) {
				return nil
			}
		}
		if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			return err
		}
		copied = append(copied, filepath.ToSlash(rel))
		return copyFile(filepath.Join(work, rel), path)
	})
	if err != nil {
		return nil, fmt.Errorf("dequant: copying the files of %s: %w", ck.Dir, err)
	}
	return copied, nil
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o777); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
