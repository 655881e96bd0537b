package outdir

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/regular"
)

// WriteIndex checks the output weight files, in dir, by reopening them,
// and returns their total size. For more than one file it also writes
// model.safetensors.index.json, with total_parameters params and
// total_size the sum of the tensors' bytes, and returns its name.
func WriteIndex(dir *Dir, files []string, params int64) (fileBytes int64, index string, err error) {
	if len(files) == 1 {
		// No index: the check need not list the tensors (see checkOutput).
		size, err := checkOutput(dir, files[0])
		if err != nil {
			return 0, "", fmt.Errorf("checking output: %w", err)
		}
		return size, "", nil
	}
	var entries []checkpoint.IndexEntry
	var totalSize int64
	for _, name := range files {
		sf, size, err := openOutput(dir, name)
		if err != nil {
			return 0, "", fmt.Errorf("checking output: %w", err)
		}
		for _, t := range sf.Tensors() {
			entries = append(entries, checkpoint.IndexEntry{Tensor: t.Name, File: name})
			totalSize += t.Size()
		}
		fileBytes += size
	}
	if len(files) <= 1 {
		return fileBytes, "", nil
	}
	b, err := checkpoint.NewIndex(params, totalSize, entries).Marshal()
	if err != nil {
		return 0, "", err
	}
	if err := dir.WriteFile(checkpoint.IndexFileName, b); err != nil {
		return 0, "", err
	}
	return fileBytes, checkpoint.IndexFileName, nil
}

// fullCheckLimit is the largest header that checkOutput parses whole.
const fullCheckLimit = 16 << 20

// checkOutput checks output file name in dir and returns its size: its
// header is parsed and its layout checked as every reader does, unless the
// header is over fullCheckLimit (about 240,000 tensors); then only the
// header length is checked against the file size. Such a header, and
// every tensor offset in it, was written by safetensors.Layout, whose
// bytes the tests compare with the reference writer's, and parsing it
// again would hold as much memory as the whole conversion (a 100 MB header
// for 1.5 million tensors parses into 230 MB).
func checkOutput(dir *Dir, name string) (int64, error) {
	f, err := dir.Open(name)
	if err != nil {
		return 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, err
	}
	var prefix [8]byte
	_, err = f.ReadAt(prefix[:], 0)
	f.Close()
	if err != nil {
		return 0, fmt.Errorf("%s: reading header length: %w", dir.Join(name), err)
	}
	if n := binary.LittleEndian.Uint64(prefix[:]); n > fullCheckLimit {
		if n > safetensors.MaxHeaderLen || int64(n) > fi.Size()-8 {
			return 0, fmt.Errorf("%s: header length %d does not fit the %d-byte file", dir.Join(name), n, fi.Size())
		}
		return fi.Size(), nil
	}
	_, size, err := openOutput(dir, name)
	return size, err
}

// openOutput reads the header of output file name in dir.
func openOutput(dir *Dir, name string) (*safetensors.Reader, int64, error) {
	f, err := dir.Open(name)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	r, err := safetensors.NewReader(f, fi.Size())
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", dir.Join(name), err)
	}
	return r, fi.Size(), nil
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
func CopyAux(ctx context.Context, ck *checkpoint.Checkpoint, dir *Dir) (copied, skipped []string, err error) {
	copied, skipped, err = AuxFiles(ck)
	if err != nil {
		return nil, nil, err
	}
	for _, rel := range copied {
		if err := ctx.Err(); err != nil {
			return nil, nil, context.Cause(ctx)
		}
		if err := copyFile(dir, rel, filepath.Join(ck.Dir, filepath.FromSlash(rel))); err != nil {
			return nil, nil, err
		}
	}
	return copied, skipped, nil
}

// AuxFiles returns the files CopyAux copies and those it leaves out.
func AuxFiles(ck *checkpoint.Checkpoint) (copied, skipped []string, err error) {
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
	return copied, skipped, nil
}

// copyFile copies the regular file src to the file name of dir and syncs
// it.
func copyFile(dir *Dir, name, src string) (err error) {
	in, _, err := regular.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := dir.Create(name)
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
