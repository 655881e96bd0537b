package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/atomicfile"
	"github.com/qconv/qconv/internal/pyjson"
	"github.com/qconv/qconv/internal/regular"
)

// FixResult says what [Fix] changed.
type FixResult struct {
	// Retyped lists the packed 4-bit weights whose dtype became U8, as
	// "file: tensor (F32 [n, 1] -> U8 [bytes, 1])".
	Retyped []string
	// Rewritten lists the .safetensors files that were rewritten (base
	// names); every other file was copied byte for byte.
	Rewritten []string
	// ConfigStorage is the bnb_4bit_quant_storage value that was replaced
	// by "uint8", or "" if config.json was copied unchanged.
	ConfigStorage string
	// ConfigReformatted reports that config.json was not in the layout
	// transformers writes (json.dumps(indent=2, sort_keys=True) and a
	// newline), so rewriting it changed more than the one value.
	ConfigReformatted bool
	// Skipped lists directory entries that were not copied (directories
	// and other non-regular files).
	Skipped []string
	// Unchanged reports that nothing needed repairing: dst is a copy of
	// src.
	Unchanged bool
	// Linked lists the files of dst that are hard links to src's (base
	// names); the other unchanged files were copied.
	Linked []string
}

// FixOptions configure [FixWith]. The zero value is Fix's behaviour.
type FixOptions struct {
	// Force allows dst to be an existing directory, which is replaced
	// (once the repaired copy is complete) by the new one. It must not be
	// src or hold it.
	Force bool
}

// Fix writes a repaired copy of the checkpoint src (a directory, or a
// single .safetensors file) to the new directory dst, which must not
// exist. The one repair is for 4-bit weights saved with a float storage
// dtype: every packed weight (a tensor with a quant_state.bitsandbytes__*
// sibling) stored in a dtype other than U8 becomes U8 [nbytes, 1] with the
// same bytes, each rewritten file keeps the reference safetensors layout,
// and config.json's quantization_config.bnb_4bit_quant_storage becomes
// "uint8". All other files are copied unchanged.
//
// The output is written to a temporary directory beside dst and renamed to
// dst when complete, so dst either does not exist or is complete; src is
// never modified. Fix always writes dst, also when there is nothing to
// repair (then FixResult.Unchanged is set), so that the next step of a
// pipeline finds it. Files copied unchanged are hard links to src's where
// the file system allows (FixResult.Linked): replace such a file rather
// than edit it in place, or src changes too. Every .safetensors file of
// src must be structurally valid.
func Fix(dst, src string) (*FixResult, error) {
	return FixWith(dst, src, FixOptions{})
}

// FixWith is [Fix] with options.
func FixWith(dst, src string, opts FixOptions) (*FixResult, error) {
	if err := checkNotWithin(src, dst); err != nil {
		return nil, err
	}
	replace := false
	if st, err := os.Lstat(dst); err == nil {
		if !opts.Force {
			return nil, fmt.Errorf("audit: fix: %s already exists; give a new directory, or --force to replace it (the input is never modified)", dst)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("audit: fix: %s exists and is not a directory; not replacing it", dst)
		}
		if err := checkNotInside(src, dst); err != nil {
			return nil, err
		}
		replace = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("audit: fix: %w", err)
	}
	c, err := load(src)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	for _, f := range c.Files {
		if f.Err != nil {
			return nil, fmt.Errorf("audit: fix: %s cannot be read, so it cannot be repaired: %w", f.Path, f.Err)
		}
	}

	// The packed weights to retype, by file.
	retype := map[*File]map[string]bool{}
	res := &FixResult{}
	for _, g := range c.QuantGroups() {
		p := g.Packed
		if p == nil || len(g.States) == 0 || p.DType == dtype.U8 {
			continue
		}
		if retype[p.File] == nil {
			retype[p.File] = map[string]bool{}
		}
		retype[p.File][p.Name] = true
		res.Retyped = append(res.Retyped, fmt.Sprintf("%s: %s (%s -> U8 [%d, 1])", p.File.Name, p.Name, p.DTypeShape(), p.Size()))
	}

	var config []byte
	if c.Config != nil {
		if c.Config.Err != nil {
			return nil, fmt.Errorf("audit: fix: %s: %w", c.Config.Path, c.Config.Err)
		}
		if b := c.Config.Bnb(); b.Is4bit() && b.Storage != "uint8" {
			v := c.Config.Value // c is Fix's own; editing it in place is fine
			res.ConfigReformatted = !bytes.Equal(append(v.MarshalIndentSorted(), '\n'), c.Config.data)
			v.Get("quantization_config").Set("bnb_4bit_quant_storage", pyjson.String("uint8"))
			config = append(v.MarshalIndentSorted(), '\n')
			res.ConfigStorage = b.Storage
		}
	}
	res.Unchanged = len(retype) == 0 && config == nil

	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dst)), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("audit: fix: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()

	// What to write: the checkpoint's files, and for a directory every
	// other regular file beside them.
	type item struct{ name, path string }
	var items []item
	if c.IsDir {
		entries, err := os.ReadDir(src)
		if err != nil {
			return nil, fmt.Errorf("audit: fix: %w", err)
		}
		for _, e := range entries {
			p := filepath.Join(src, e.Name())
			if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
				res.Skipped = append(res.Skipped, e.Name())
				continue
			}
			items = append(items, item{e.Name(), p})
		}
	} else {
		items = []item{{filepath.Base(src), src}}
	}
	byPath := map[string]*File{}
	for _, f := range c.Files {
		byPath[f.Path] = f
	}
	for _, it := range items {
		out := filepath.Join(tmp, it.name)
		var err error
		switch f := byPath[it.path]; {
		case f != nil && retype[f] != nil:
			err = rewriteRetyped(out, f, retype[f])
			res.Rewritten = append(res.Rewritten, it.name)
		case c.Config != nil && it.path == c.Config.Path && config != nil:
			err = writeSynced(out, bytes.NewReader(config))
		default:
			var linked bool
			linked, err = linkOrCopy(out, it.path)
			if linked {
				res.Linked = append(res.Linked, it.name)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("audit: fix: writing %s: %w", it.name, err)
		}
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return nil, fmt.Errorf("audit: fix: %w", err)
	}
	var old string
	if replace {
		// Move the old dst aside, put the new one in place, then remove the
		// old one: dst is always either the old or the new directory.
		old = tmp + ".old"
		if err := os.Rename(dst, old); err != nil {
			return nil, fmt.Errorf("audit: fix: %w", err)
		}
	} else if _, err := os.Lstat(dst); err == nil {
		return nil, fmt.Errorf("audit: fix: %s appeared while writing; not replacing it", dst)
	}
	if err := os.Rename(tmp, dst); err != nil {
		if old != "" {
			os.Rename(old, dst)
		}
		return nil, fmt.Errorf("audit: fix: %w", err)
	}
	ok = true
	if old != "" {
		if err := os.RemoveAll(old); err != nil {
			return nil, fmt.Errorf("audit: fix: removing the replaced %s: %w", old, err)
		}
	}
	if err := atomicfile.SyncDir(filepath.Dir(filepath.Clean(dst))); err != nil {
		return nil, fmt.Errorf("audit: fix: %w", err)
	}
	sort.Strings(res.Rewritten)
	sort.Strings(res.Linked)
	return res, nil
}

// checkNotInside fails when dst is src or a directory holding it, which
// --force would replace.
func checkNotInside(src, dst string) error {
	d, err := filepath.Abs(dst)
	if err != nil {
		return fmt.Errorf("audit: fix: %w", err)
	}
	for p, _ := filepath.Abs(src); ; p = filepath.Dir(p) {
		if a, err := os.Stat(p); err == nil {
			if b, err := os.Stat(d); err == nil && os.SameFile(a, b) {
				return fmt.Errorf("audit: fix: %s is or holds the input %s; give another directory (the input is never modified)", dst, src)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// checkNotWithin refuses a dst inside the input directory src (where the
// output would be written into the input, and become part of it), also
// when dst does not exist yet: the symbolic links of the part of dst that
// exists are resolved.
func checkNotWithin(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil || !st.IsDir() {
		return nil // a file input: load reports a missing one
	}
	s, err := filepath.Abs(src)
	if err == nil {
		s, err = filepath.EvalSymlinks(s)
	}
	if err != nil {
		return fmt.Errorf("audit: fix: %w", err)
	}
	d, err := filepath.Abs(dst)
	if err != nil {
		return fmt.Errorf("audit: fix: %w", err)
	}
	var rest []string
	for p := d; ; p = filepath.Dir(p) {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			d = filepath.Join(append([]string{r}, rest...)...)
			break
		}
		if p == filepath.Dir(p) {
			break
		}
		rest = append([]string{filepath.Base(p)}, rest...)
	}
	if rel, err := filepath.Rel(s, d); err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("audit: fix: %s is inside the input %s; give a directory outside it (the input is never modified)", dst, src)
	}
	return nil
}

// linkOrCopy makes out a hard link to in, or a synced copy where the file
// system cannot link (another device, no hard links). It reports whether
// it linked.
func linkOrCopy(out, in string) (linked bool, err error) {
	if os.Link(in, out) == nil {
		return true, nil
	}
	return false, copyFile(out, in)
}

// rewriteRetyped writes f to out with the named tensors as U8 [size, 1],
// laid out as the reference writer does, streaming each tensor's bytes.
func rewriteRetyped(out string, f *File, names map[string]bool) error {
	src := f.Reader.Tensors()
	specs := make([]safetensors.TensorSpec, len(src))
	byName := make(map[string]safetensors.TensorInfo, len(src))
	for i, t := range src {
		specs[i] = safetensors.TensorSpec{Name: t.Name, DType: t.DType, Shape: t.Shape}
		if names[t.Name] {
			specs[i].DType, specs[i].Shape = dtype.U8, []int64{t.Size(), 1}
		}
		byName[t.Name] = t
	}
	plan, err := safetensors.NewPlan(f.Reader.Metadata(), specs)
	if err != nil {
		return err
	}
	o, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer o.Close()
	w, err := safetensors.NewWriter(o, plan)
	if err != nil {
		return err
	}
	for _, t := range plan.Tensors {
		if err := w.WriteTensor(t.Name, f.Reader.SectionReader(byName[t.Name])); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := o.Sync(); err != nil {
		return err
	}
	return o.Close()
}

func copyFile(out, in string) error {
	r, _, err := regular.Open(in)
	if err != nil {
		return err
	}
	defer r.Close()
	return writeSynced(out, r)
}

func writeSynced(out string, r io.Reader) error {
	o, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer o.Close()
	if _, err := io.Copy(o, r); err != nil {
		return err
	}
	if err := o.Sync(); err != nil {
		return err
	}
	return o.Close()
}
