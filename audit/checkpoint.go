package audit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/qconv/qconv/formats/checkpoint"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/pyjson"
	"github.com/qconv/qconv/internal/regular"
)

// Well-known file names in a checkpoint directory.
const (
	IndexName         = checkpoint.IndexFileName
	SingleName        = "model.safetensors"
	ConfigName        = "config.json"
	adapterConfigName = "adapter_config.json"
	adapterModelName  = "adapter_model.safetensors"
)

// Checkpoint is the lenient view of one PATH argument that rules inspect:
// whatever could be read is there, and what could not be read carries its
// error, so that rules can report it instead of the audit stopping.
type Checkpoint struct {
	// Path is the argument as given.
	Path string
	// Dir is the directory holding the files ("." style paths are kept as
	// given so that findings show paths the user recognises).
	Dir string
	// IsDir reports whether Path is a directory. A file argument is
	// audited alone: no config.json or index is read for it.
	IsDir bool
	// Files are the .safetensors files audited, sorted by name.
	Files []*File
	// Config is config.json, or nil if the directory has none (always nil
	// for a file argument).
	Config *Config
	// Index is model.safetensors.index.json, or nil if there is none.
	Index *Index
	// BothLayouts reports a directory holding both model.safetensors and
	// an index. Like transformers, the audit then takes model.safetensors
	// as the checkpoint and ignores the index's shards.
	BothLayouts bool
	// Adapter reports that the checkpoint is a PEFT adapter
	// (adapter_config.json, or a file named adapter_model.safetensors),
	// not a full model.
	Adapter bool
	// Base is, for an adapter, the base model to check it against
	// (Options.Base), or "".
	Base string

	tensors []*Tensor
	byName  map[string][]*Tensor
	groups  []*QuantGroup
	grouped bool
}

// File is one .safetensors file of a checkpoint.
type File struct {
	// Path is the file's path as shown in findings.
	Path string
	// Name is the base name.
	Name string
	// Size is the file size in bytes.
	Size int64
	// Reader is the opened file, or nil if it could not be opened; then
	// Err says why (a *safetensors.FormatError for malformed files).
	Reader *safetensors.Reader
	Err    error
	// Member reports whether the file's tensors belong to the checkpoint:
	// false for a .safetensors file that the index does not reference.
	Member bool

	f     *os.File
	meter *meter // nil: reads are not metered
}

// Tensor is one tensor of a checkpoint, with the file that holds it.
type Tensor struct {
	safetensors.TensorInfo
	File *File
}

// DTypeShape returns the tensor's dtype and shape as findings show them:
// "F32 [16384, 1]".
func (t *Tensor) DTypeShape() string {
	parts := make([]string, len(t.Shape))
	for i, d := range t.Shape {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return fmt.Sprintf("%s [%s]", t.DType, strings.Join(parts, ", "))
}

// Section returns a reader of the tensor's bytes.
//
// During a [RunContext] with a context or a progress callback, reads count
// towards the progress and fail with the context's error once it is
// cancelled.
func (t *Tensor) Section() *io.SectionReader {
	sr := t.File.Reader.SectionReader(t.TensorInfo)
	if t.File.meter == nil {
		return sr
	}
	return io.NewSectionReader(meteredReader{sr, t, t.File.meter}, 0, sr.Size())
}

// Config is config.json.
type Config struct {
	Path  string        // as shown in findings
	Value *pyjson.Value // nil if Err != nil
	Err   error         // why the file could not be read or parsed

	data []byte // the file's bytes, for Fix to tell whether it was in transformers' layout
}

// Index is model.safetensors.index.json.
type Index struct {
	Path string // as shown in findings
	// Index is the parsed file, or nil if Err != nil.
	*checkpoint.Index
	// Err says why the file could not be used: an I/O error, or a
	// *checkpoint.Problem from checkpoint.ParseIndex.
	Err error
}

// ErrNothingToAudit is returned (wrapped) by [Run] for a path that is
// neither a safetensors file nor a directory holding one or an index.
var ErrNothingToAudit = errors.New("audit: nothing to audit")

// PathError is a path given to [Run] that could not be audited at all: it
// does not exist or cannot be read, or it holds no checkpoint (then it
// wraps ErrNothingToAudit).
type PathError struct {
	Path string // as given
	Msg  string // what is wrong, without the path
	Err  error  // the cause
}

// Error returns "audit: PATH: MSG".
func (e *PathError) Error() string { return "audit: " + e.Path + ": " + e.Msg }

// Unwrap returns the cause.
func (e *PathError) Unwrap() error { return e.Err }

// ioMsg returns the message of an I/O error without the operation and
// path that a *fs.PathError repeats.
func ioMsg(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// load builds the lenient view of path. It fails only when there is
// nothing to audit at all; everything else is recorded for the rules.
func load(path string) (*Checkpoint, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, &PathError{Path: path, Msg: ioMsg(err), Err: err}
	}
	c := &Checkpoint{Path: path}
	if !st.IsDir() {
		if !st.Mode().IsRegular() {
			return nil, &PathError{Path: path, Msg: "not a regular file or a directory", Err: ErrNothingToAudit}
		}
		c.Dir = filepath.Dir(path)
		f := openFile(path)
		f.Member = true
		c.Files = []*File{f}
		c.Adapter = f.Name == adapterModelName
		return c, nil
	}
	c.IsDir = true
	c.Dir = path
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, &PathError{Path: path, Msg: ioMsg(err), Err: err}
	}
	var names []string
	hasIndex, hasConfig := false, false
	for _, e := range entries {
		name := e.Name()
		full := filepath.Join(path, name)
		// Stat follows symlinks (Hub caches link to blobs). A FIFO, a
		// device or a socket under a checkpoint's file name is kept, so
		// that opening it reports "not a regular file" (a FIFO shard is
		// not "missing", a /dev/zero config.json is an error).
		fi, err := os.Stat(full)
		if err != nil || fi.IsDir() {
			continue
		}
		switch {
		case name == IndexName:
			hasIndex = true
		case name == ConfigName:
			hasConfig = true
		case name == adapterConfigName || name == adapterModelName:
			c.Adapter = true
		}
		if strings.HasSuffix(name, ".safetensors") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) == 0 && !hasIndex {
		return nil, &PathError{Path: path, Msg: "holds no .safetensors file and no " + IndexName, Err: ErrNothingToAudit}
	}
	if hasConfig {
		c.Config = readConfig(filepath.Join(path, ConfigName))
	}
	if hasIndex {
		c.Index = readIndex(filepath.Join(path, IndexName))
	}
	// Like transformers: model.safetensors wins over an index beside it.
	c.BothLayouts = hasIndex && slices.Contains(names, SingleName)
	referenced := map[string]bool{}
	useIndex := c.Index != nil && c.Index.Err == nil && !c.BothLayouts
	if useIndex {
		for _, e := range c.Index.WeightMap {
			referenced[e.File] = true
		}
	}
	for _, name := range names {
		f := openFile(filepath.Join(path, name))
		switch {
		case c.BothLayouts:
			f.Member = name == SingleName
		case useIndex:
			f.Member = referenced[name]
		default:
			f.Member = true
		}
		c.Files = append(c.Files, f)
	}
	return c, nil
}

func openFile(path string) *File {
	f := &File{Path: path, Name: filepath.Base(path)}
	osf, st, err := regular.Open(path)
	if err != nil {
		f.Err = err
		return f
	}
	f.Size = st.Size()
	r, err := safetensors.NewReader(osf, f.Size)
	if err != nil {
		osf.Close()
		f.Err = err
		return f
	}
	f.f = osf
	f.Reader = r
	return f
}

// Close closes the checkpoint's files.
func (c *Checkpoint) Close() error {
	var first error
	for _, f := range c.Files {
		if f.f != nil {
			if err := f.f.Close(); err != nil && first == nil {
				first = err
			}
			f.f = nil
		}
	}
	return first
}

func readConfig(path string) *Config {
	c := &Config{Path: path}
	b, err := checkpoint.ReadFileLimited(path, checkpoint.MaxConfigSize)
	if err != nil {
		c.Err = err
		return c
	}
	v, err := pyjson.Parse(b)
	if err != nil {
		c.Err = err
		return c
	}
	if v.Kind() != pyjson.KindObject {
		c.Err = fmt.Errorf("the top level is a JSON %s, not an object", v.Kind())
		return c
	}
	c.Value, c.data = v, b
	return c
}

func readIndex(path string) *Index {
	x := &Index{Path: path}
	b, err := checkpoint.ReadFileLimited(path, checkpoint.MaxIndexSize)
	if err != nil {
		x.Err = err
		return x
	}
	x.Index, x.Err = checkpoint.ParseIndex(b)
	return x
}

// Tensors returns the tensors of the checkpoint's member files that could
// be opened, file by file in header order.
func (c *Checkpoint) Tensors() []*Tensor {
	if c.byName == nil {
		c.byName = map[string][]*Tensor{}
		for _, f := range c.Files {
			if !f.Member || f.Reader == nil {
				continue
			}
			for _, ti := range f.Reader.Tensors() {
				t := &Tensor{TensorInfo: ti, File: f}
				c.tensors = append(c.tensors, t)
				c.byName[ti.Name] = append(c.byName[ti.Name], t)
			}
		}
	}
	return c.tensors
}

// Tensor returns the tensor called name (the first one if several files
// hold it), or nil.
func (c *Checkpoint) Tensor(name string) *Tensor {
	c.Tensors()
	if ts := c.byName[name]; len(ts) > 0 {
		return ts[0]
	}
	return nil
}

// TensorsNamed returns every tensor called name, one per file that holds
// it.
func (c *Checkpoint) TensorsNamed(name string) []*Tensor {
	c.Tensors()
	return c.byName[name]
}

// ReadSmall reads the bytes of t if it is at most max bytes long, for the
// small tensors (quant states, code books) that a header-only audit reads.
func (c *Checkpoint) ReadSmall(t *Tensor, max int64) ([]byte, error) {
	if n := t.End - t.Begin; n > max {
		return nil, fmt.Errorf("audit: %s: tensor %q is %d bytes, more than the %d expected", t.File.Path, t.Name, n, max)
	}
	b := make([]byte, t.End-t.Begin)
	if _, err := io.ReadFull(t.Section(), b); err != nil {
		return nil, fmt.Errorf("audit: %s: tensor %q: %w", t.File.Path, t.Name, err)
	}
	return b, nil
}

// MemberFiles returns the files whose tensors belong to the checkpoint.
func (c *Checkpoint) MemberFiles() []*File {
	var out []*File
	for _, f := range c.Files {
		if f.Member {
			out = append(out, f)
		}
	}
	return out
}

// FindingFile returns the file to name in a finding about the checkpoint
// as a whole: config.json when there is one, else the index, else the
// first file.
func (c *Checkpoint) FindingFile() string {
	switch {
	case c.Config != nil:
		return c.Config.Path
	case c.Index != nil:
		return c.Index.Path
	case len(c.Files) > 0:
		return c.Files[0].Path
	}
	return c.Path
}
