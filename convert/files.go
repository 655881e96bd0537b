package convert

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// otherWeightExts are extensions of weight files in formats other than
// safetensors; they are not copied to the output.
var otherWeightExts = []string{".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".pkl", ".npz", ".safetensors"}

// auxFiles lists the files of the source directory that are copied to the
// output unchanged (generation_config.json, tokenizer files, README.md,
// chat templates, ...), as slash-separated paths relative to dir, and the
// files deliberately not copied. Skipped: config.json (rewritten), the
// checkpoint's weights and index (converted), other weight files (.bin,
// .pt, .pth, .ckpt, .safetensors, ...: weights in another format, which
// would be stale next to the 4-bit ones), and hidden files and
// directories (.git, .cache). Subdirectories are copied with the same
// rules.
func auxFiles(dir string, exclude map[string]bool) (copy, skipped []string, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		name := d.Name()
		if strings.HasPrefix(name, ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		if exclude[rel] {
			return nil
		}
		lower := strings.ToLower(name)
		for _, ext := range otherWeightExts {
			if strings.HasSuffix(lower, ext) {
				skipped = append(skipped, rel)
				return nil
			}
		}
		if strings.Contains(lower, ".safetensors.index") || strings.HasSuffix(lower, ".index.json") && strings.Contains(lower, "pytorch_model") {
			skipped = append(skipped, rel)
			return nil
		}
		fi, err := os.Stat(path) // follows symlinks (hub cache snapshots)
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		copy = append(copy, rel)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("convert: listing %s: %w", dir, err)
	}
	return copy, skipped, nil
}

// copyFile copies src to dst (created, mode 0666 before umask) and syncs it.
func copyFile(dst, src string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o777); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("convert: %w", cerr)
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("convert: copying %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return nil
}

// writeFile writes b to path and syncs it.
func writeFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("convert: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("convert: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("convert: %w", err)
	}
	return nil
}
