package outdir

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/safetensors"
)

// WriteIndex checks the output weight files, in dir, by reopening them,
// and returns their total size. For more than one file it also writes
// model.safetensors.index.json, with total_parameters params and
// total_size the sum of the tensors' bytes, and returns its name.
func WriteIndex(dir string, files []string, params int64) (fileBytes int64, index string, err error) {
	var entries []checkpoint.IndexEntry
	var totalSize int64
	for _, name := range files {
		sf, err := safetensors.Open(filepath.Join(dir, name))
		if err != nil {
			return 0, "", fmt.Errorf("checking output: %w", err)
		}
		for _, t := range sf.Tensors() {
			entries = append(entries, checkpoint.IndexEntry{Tensor: t.Name, File: name})
			totalSize += t.Size()
		}
		fileBytes += sf.Size()
		sf.Close()
	}
	if len(files) <= 1 {
		return fileBytes, "", nil
	}
	b, err := checkpoint.NewIndex(params, totalSize, entries).Marshal()
	if err != nil {
		return 0, "", err
	}
	if err := WriteFile(filepath.Join(dir, checkpoint.IndexFileName), b); err != nil {
		return 0, "", err
	}
	return fileBytes, checkpoint.IndexFileName, nil
}

// otherWeightExts are extensions of weight files in formats other than
// safetensors; they are not copied to the output.
var otherWeightExts = []string{".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".pkl", ".npz", ".safetensors"}

// CopyAux copies the files of the checkpoint's directory that go to the
// output unchanged (generation_config.json, tokenizer files, README.md,
// chat templates, ...) into dir, and returns them, and the files
// deliberately not copied, as slash-separated paths relative to the
// checkpoint's directory. Left out: the checkpoint's own weights, index
// and config.json (the output has its own), weight files in other
// formats and their indexes (.bin, .pt, .pth, .ckpt, .safetensors, ...,
// *.index.json: stale next to the output's weights; these are returned as
// not copied), and hidden files and directories (.git, .cache).
// Subdirectories are copied with the same rules. A single-file checkpoint
// has no other files.
func CopyAux(ctx context.Context, ck *checkpoint.Checkpoint, dir string) (copied, skipped []string, err error) {
	if ck.Layout == checkpoint.LayoutFile {
		return nil, nil, nil
	}
	exclude := map[string]bool{checkpoint.ConfigFileName: true, checkpoint.IndexFileName: true}
	for _, sh := range ck.Shards {
		exclude[filepath.ToSlash(sh.Name)] = true
	}
	err = filepath.WalkDir(ck.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(ck.Dir, path)
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
		if d.IsDir() || exclude[rel] {
			return nil
		}
		lower := strings.ToLower(name)
		for _, ext := range otherWeightExts {
			if strings.HasSuffix(lower, ext) {
				skipped = append(skipped, rel)
				return nil
			}
		}
		if strings.Contains(lower, ".safetensors.index") || strings.HasSuffix(lower, ".index.json") {
			skipped = append(skipped, rel)
			return nil
		}
		fi, err := os.Stat(path) // follows symlinks (hub cache snapshots)
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			copied = append(copied, rel)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listing %s: %w", ck.Dir, err)
	}
	for _, rel := range copied {
		if err := ctx.Err(); err != nil {
			return nil, nil, context.Cause(ctx)
		}
		if err := CopyFile(filepath.Join(dir, filepath.FromSlash(rel)), filepath.Join(ck.Dir, filepath.FromSlash(rel))); err != nil {
			return nil, nil, err
		}
	}
	return copied, skipped, nil
}

// CopyFile copies src to dst (created with its directory, mode 0666 before
// umask) and syncs it.
func CopyFile(dst, src string) (err error) {
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
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("copying %s: %w", src, err)
	}
	return out.Sync()
}

// WriteFile writes b to path (mode 0666 before umask) and syncs it.
func WriteFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
