// Package checkpoint opens Hugging Face safetensors checkpoints as one
// collection of tensors, whatever their layout on disk:
//
//   - a single .safetensors file (LayoutFile);
//   - a directory holding model.safetensors (LayoutDir);
//   - a directory holding model.safetensors.index.json and the shard files
//     it names (LayoutSharded).
//
// A directory may also hold config.json, which is parsed with
// internal/pyjson so that it can be edited and written back byte for byte
// as transformers would write it.
//
// Open is strict: every inconsistency between the index, the shards and the
// tensors they hold is an error naming the file and the tensor at fault.
// OpenLenient opens as much as it can and returns each inconsistency as a
// Problem, for callers that must report problems rather than stop at the
// first one. Problem codes are stable, so callers can map them to rule IDs
// (the auditor, which has its own lenient loader, maps the codes of
// ParseIndex).
//
// The package also reads and writes the index file (ParseIndex, NewIndex,
// Index.Marshal) and counts logical parameters of 4-bit checkpoints
// (LogicalParameters).
//
// This package does not validate safetensors files itself (that is
// formats/safetensors, whose errors it wraps), does not interpret tensor
// contents or quantization settings (formats/bnb), and does not write
// checkpoints (convert/).
package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qconv/qconv/formats/dtype"
	"github.com/qconv/qconv/formats/safetensors"
	"github.com/qconv/qconv/internal/pyjson"
	"github.com/qconv/qconv/internal/regular"
)

// File names of a checkpoint directory.
const (
	// WeightsFileName is the weights file of an unsharded checkpoint.
	WeightsFileName = "model.safetensors"
	// ConfigFileName is the model configuration written by transformers.
	ConfigFileName = "config.json"
)

// MaxConfigSize is the largest config.json Open reads, in bytes.
const MaxConfigSize = 16 << 20

// maxQuantStateSize bounds the quant-state JSON tensors read to count
// parameters; real ones are under 300 bytes.
const maxQuantStateSize = 1 << 20

// Layout is how a checkpoint is stored on disk.
type Layout uint8

// The checkpoint layouts.
const (
	LayoutFile    Layout = iota + 1 // a .safetensors file given by its path
	LayoutDir                       // a directory holding model.safetensors
	LayoutSharded                   // a directory holding model.safetensors.index.json and shards
)

// String returns "file", "dir" or "sharded".
func (l Layout) String() string {
	switch l {
	case LayoutFile:
		return "file"
	case LayoutDir:
		return "dir"
	case LayoutSharded:
		return "sharded"
	}
	return fmt.Sprintf("Layout(%d)", uint8(l))
}

// A Checkpoint is an open checkpoint. Close it to close its shard files.
type Checkpoint struct {
	// Path is the path given to Open.
	Path string
	// Dir is the checkpoint directory: Path itself for a directory, the
	// directory containing the file for LayoutFile.
	Dir string
	// Layout is how the checkpoint is stored.
	Layout Layout
	// Shards are the open safetensors files, sorted by Name. LayoutFile
	// and LayoutDir have exactly one (unless OpenLenient could not open it).
	Shards []*Shard
	// Index is the parsed index file, or nil unless Layout is LayoutSharded.
	Index *Index
	// Config is the parsed config.json of Dir, or nil if there is none.
	// For LayoutFile it is the config.json next to the file, if any.
	Config *pyjson.Value

	tensors []Tensor // sorted by name
}

// A Shard is one open safetensors file of a checkpoint.
type Shard struct {
	// Name is the file name relative to the checkpoint directory
	// ("model-00001-of-00010.safetensors").
	Name string
	// Path is the file's path (Dir joined with Name, or the path given
	// to Open for LayoutFile).
	Path string
	*safetensors.File
}

// A Tensor is a tensor of a checkpoint and the shard that holds it.
// Begin and End are relative to that shard's data section.
type Tensor struct {
	// TensorInfo is the shard reader's own entry (shared, not copied: 16
	// bytes a tensor here instead of 72).
	*safetensors.TensorInfo
	Shard *Shard
}

// SectionReader returns a reader of the tensor's bytes (see
// safetensors.Reader.SectionReader).
func (t Tensor) SectionReader() *io.SectionReader { return t.Shard.SectionReader(*t.TensorInfo) }

// ReadAll reads the tensor's bytes into memory. It is meant for small
// tensors; stream large ones through SectionReader.
func (t Tensor) ReadAll() ([]byte, error) { return t.Shard.ReadTensor(t.Name) }

// Open opens the checkpoint at path: a .safetensors file, or a directory
// holding model.safetensors or model.safetensors.index.json.
//
// Open is strict. It fails, with a *Problem naming the file and tensor,
// if any shard is not a valid safetensors file, if the index is invalid,
// names a missing shard, maps a tensor to a shard that does not hold it,
// omits a tensor that a shard holds, or disagrees with the tensors on
// metadata.total_size, if two shards hold the same tensor, if a directory
// holds both model.safetensors and an index, or if config.json exists and is
// not a valid JSON object. It returns the first problem in the order
// OpenLenient lists them.
//
// Open reads only headers, the index and config.json: opening a 100 GB
// checkpoint reads kilobytes. Every shard stays open until Close.
func Open(path string) (*Checkpoint, error) {
	c, probs := OpenLenient(path)
	if len(probs) > 0 {
		if c != nil {
			c.Close()
		}
		return nil, probs[0]
	}
	return c, nil
}

// OpenLenient opens the checkpoint at path as far as it can and returns
// every problem that Open would fail on, in a deterministic order: the
// layout, then the index, then per shard in name order, then config.json.
//
// The Checkpoint is nil only if path cannot be read at all. Otherwise it
// holds the shards that opened, the index if it parsed, the config if it
// parsed, and one Tensor per distinct tensor name found in an open shard:
// taken from the shard the index names when that shard holds it, else from
// the first shard (in name order) that does. A directory holding both
// model.safetensors and an index is opened as LayoutDir, as transformers
// does.
func OpenLenient(path string) (*Checkpoint, []*Problem) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, []*Problem{{Code: CodeNotFound, File: path, Msg: ioMsg(err), Err: err}}
	}
	c := &Checkpoint{Path: path}
	var o opener
	o.c = c
	if !fi.IsDir() {
		c.Layout = LayoutFile
		c.Dir = filepath.Dir(path)
		o.openShard(filepath.Base(path), path)
	} else {
		c.Dir = path
		single := filepath.Join(path, WeightsFileName)
		index := filepath.Join(path, IndexFileName)
		hasSingle, hasIndex := exists(single), exists(index)
		switch {
		case hasSingle:
			c.Layout = LayoutDir
			if hasIndex {
				o.add(&Problem{Code: CodeBothLayouts, File: index,
					Msg: "the directory also holds " + WeightsFileName + ", which transformers loads instead of this index"})
			}
			o.openShard(WeightsFileName, single)
		case hasIndex:
			c.Layout = LayoutSharded
			o.openSharded(index)
		default:
			c.Layout = LayoutDir
			msg := "no " + WeightsFileName + " or " + IndexFileName
			if others, _ := ListSafetensorsFiles(path); len(others) > 0 {
				if len(others) > 3 {
					others = append(others[:3:3], "...")
				}
				msg += " (found " + strings.Join(others, ", ") + "; give a file's path to open it alone)"
			} else if pickles := pickleWeights(path); len(pickles) > 0 {
				msg += " (found " + strings.Join(pickles, ", ") + ": PyTorch pickle weights, which qconv does not read; " +
					"re-save the model as safetensors first, e.g. with transformers' save_pretrained(dir, safe_serialization=True))"
			}
			o.add(&Problem{Code: CodeNoWeights, File: path, Msg: msg})
		}
	}
	o.loadConfig()
	o.resolve()
	return c, o.probs
}

// opener carries the state of one OpenLenient call.
type opener struct {
	c     *Checkpoint
	probs []*Problem
}

func (o *opener) add(p *Problem) { o.probs = append(o.probs, p) }

// openShard opens one shard and appends it to c.Shards, or records why not.
func (o *opener) openShard(name, path string) *Shard {
	f, err := safetensors.Open(path)
	if err != nil {
		p := &Problem{Code: CodeShardInvalid, File: path, Msg: strings.TrimPrefix(ioMsg(err), path+": "), Err: err}
		var fe *safetensors.FormatError
		if errors.As(err, &fe) {
			p.Tensor = fe.Tensor
			p.Msg = fmt.Sprintf("%s (safetensors rule %s, offset %d)", fe.Msg, fe.Code, fe.Offset)
		}
		o.add(p)
		return nil
	}
	s := &Shard{Name: name, Path: path, File: f}
	o.c.Shards = append(o.c.Shards, s)
	return s
}

func (o *opener) openSharded(indexPath string) {
	c := o.c
	b, err := ReadFileLimited(indexPath, MaxIndexSize)
	if err != nil {
		o.add(&Problem{Code: CodeIndexInvalid, File: indexPath, Msg: ioMsg(err), Err: err})
		return
	}
	ix, err := ParseIndex(b)
	if err != nil {
		p := err.(*Problem) // ParseIndex returns only *Problem errors
		p.File = indexPath
		o.add(p)
		return
	}
	c.Index = ix

	listed := make(map[string][]string) // file -> tensors listed in it, in index order
	for _, e := range ix.WeightMap {
		listed[e.File] = append(listed[e.File], e.Tensor)
	}
	shardOK := true
	for _, name := range ix.Files() {
		path := filepath.Join(c.Dir, name)
		if !exists(path) {
			tensors := listed[name]
			o.add(&Problem{Code: CodeShardMissing, File: path, Tensor: tensors[0],
				Msg: fmt.Sprintf("shard named by %s for %d tensor(s) does not exist", IndexFileName, len(tensors))})
			shardOK = false
			continue
		}
		if o.openShard(name, path) == nil {
			shardOK = false
		}
	}

	// Where each tensor is, over all open shards (in name order).
	where := make(map[string][]*Shard)
	for _, s := range c.Shards {
		for _, t := range s.Tensors() {
			where[t.Name] = append(where[t.Name], s)
		}
	}
	mapped := make(map[string]string, len(ix.WeightMap))
	for _, e := range ix.WeightMap {
		mapped[e.Tensor] = e.File
	}
	for _, s := range c.Shards {
		// Listed tensors this shard lacks, in index order.
		for _, t := range listed[s.Name] {
			if _, ok := s.Tensor(t); ok {
				continue
			}
			msg := "listed in " + IndexFileName + " for this shard, which does not hold it"
			if others := where[t]; len(others) > 0 {
				msg += " (it is in " + others[0].Name + ")"
			}
			o.add(&Problem{Code: CodeTensorMissing, File: s.Path, Tensor: t, Msg: msg})
		}
		// Tensors this shard holds that the index omits or places twice.
		for _, t := range sortedNames(s.Tensors()) {
			if f, ok := mapped[t]; !ok {
				o.add(&Problem{Code: CodeTensorUnlisted, File: s.Path, Tensor: t, Msg: "not listed in " + IndexFileName})
			} else if holders := where[t]; len(holders) > 1 && holders[0] != s {
				o.add(&Problem{Code: CodeTensorDuplicate, File: s.Path, Tensor: t,
					Msg: fmt.Sprintf("also in %s (the index names %s)", holders[0].Name, f)})
			}
		}
	}
	if shardOK && ix.TotalSize >= 0 {
		var sum int64
		for name, holders := range where {
			t, _ := holders[0].Tensor(name)
			sum += t.Size()
		}
		if sum != ix.TotalSize {
			o.add(&Problem{Code: CodeTotalSize, File: indexPath,
				Msg: fmt.Sprintf("metadata.total_size is %d but the tensors hold %d bytes", ix.TotalSize, sum)})
		}
	}
}

func (o *opener) loadConfig() {
	path := filepath.Join(o.c.Dir, ConfigFileName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return
	}
	b, err := ReadFileLimited(path, MaxConfigSize)
	if err != nil {
		o.add(&Problem{Code: CodeConfigInvalid, File: path, Msg: ioMsg(err), Err: err})
		return
	}
	v, err := pyjson.Parse(b)
	if err != nil {
		o.add(&Problem{Code: CodeConfigInvalid, File: path, Msg: "not valid JSON (" + strings.TrimPrefix(err.Error(), "pyjson: ") + "); fix it, or write it again with config.save_pretrained()", Err: err})
		return
	}
	if v.Kind() != pyjson.KindObject {
		o.add(&Problem{Code: CodeConfigInvalid, File: path, Msg: "config is a JSON " + v.Kind().String() + ", not an object"})
		return
	}
	o.c.Config = v
}

// resolve builds the tensor list (see OpenLenient).
func (o *opener) resolve() {
	c := o.c
	slices.SortFunc(c.Shards, func(a, b *Shard) int { return strings.Compare(a.Name, b.Name) })
	// Every tensor of every shard, sorted by name; where two shards hold
	// a name, the one the index maps it to wins, else the first shard.
	// (No map of names: at about 40 bytes a tensor it would cost more
	// than the tensors themselves; Tensor searches the sorted slice.)
	n := 0
	for _, s := range c.Shards {
		n += len(s.Tensors())
	}
	c.tensors = make([]Tensor, 0, n)
	for _, s := range c.Shards {
		ts := s.Tensors()
		for i := range ts {
			c.tensors = append(c.tensors, Tensor{TensorInfo: &ts[i], Shard: s})
		}
	}
	slices.SortStableFunc(c.tensors, func(a, b Tensor) int { return strings.Compare(a.Name, b.Name) })
	var mapped map[string]string // the index's weight_map, built at the first duplicate
	out := c.tensors[:0]
	for i := 0; i < len(c.tensors); {
		j := i + 1
		for j < len(c.tensors) && c.tensors[j].Name == c.tensors[i].Name {
			j++
		}
		pick := c.tensors[i]
		if j > i+1 && c.Index != nil {
			if mapped == nil {
				mapped = make(map[string]string, len(c.Index.WeightMap))
				for _, e := range c.Index.WeightMap {
					mapped[e.Tensor] = e.File
				}
			}
			if file, ok := mapped[pick.Name]; ok {
				for _, t := range c.tensors[i:j] {
					if t.Shard.Name == file {
						pick = t
						break
					}
				}
			}
		}
		out = append(out, pick)
		i = j
	}
	c.tensors = slices.Clip(out)
}

// Tensors returns every tensor of the checkpoint, sorted by name. The slice
// belongs to the Checkpoint and must not be modified.
func (c *Checkpoint) Tensors() []Tensor { return c.tensors }

// Tensor returns the tensor with the given name.
func (c *Checkpoint) Tensor(name string) (Tensor, bool) {
	i, ok := slices.BinarySearchFunc(c.tensors, name, func(t Tensor, name string) int { return strings.Compare(t.Name, name) })
	if !ok {
		return Tensor{}, false
	}
	return c.tensors[i], true
}

// TotalSize returns the sum of the byte sizes of all tensors: the sum of
// the shards' data sections, which is what transformers writes as
// metadata.total_size in an index.
func (c *Checkpoint) TotalSize() int64 {
	var n int64
	for _, t := range c.tensors {
		n += t.Size()
	}
	return n
}

// Parameters counts the checkpoint's logical parameters (see
// LogicalParameters), reading the quant-state JSON of each packed 4-bit
// weight.
func (c *Checkpoint) Parameters() (Params, error) {
	return logicalParameters(len(c.tensors), func(i int) *safetensors.TensorInfo { return c.tensors[i].TensorInfo }, func(name string) ([]byte, error) {
		t, ok := c.Tensor(name)
		if !ok {
			return nil, fmt.Errorf("checkpoint: tensor %q: not found", name)
		}
		if t.Size() > maxQuantStateSize {
			return nil, fmt.Errorf("checkpoint: %s: tensor %q: quant state of %d bytes is implausibly large", t.Shard.Path, name, t.Size())
		}
		b, err := t.ReadAll()
		if err != nil {
			return nil, fmt.Errorf("checkpoint: %s: tensor %q: %w", t.Shard.Path, name, err)
		}
		return b, nil
	})
}

// ConfigDType returns the model dtype recorded in config.json: "dtype"
// (transformers v5) or, if that key is absent, the legacy "torch_dtype".
// It reports false if there is no config, neither key, or the value is not
// a dtype name.
func (c *Checkpoint) ConfigDType() (dtype.DType, bool) {
	v := c.Config.Get("dtype")
	if v == nil {
		v = c.Config.Get("torch_dtype")
	}
	s, ok := v.AsString()
	if !ok {
		return dtype.Invalid, false
	}
	return dtype.FromTorchName(s)
}

// Close closes every shard file. It returns the first error.
func (c *Checkpoint) Close() error {
	var first error
	for _, s := range c.Shards {
		if err := s.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// ListSafetensorsFiles returns the names of the regular files in dir whose
// names end in ".safetensors", sorted. OpenLenient uses it to name the
// files of a directory that has neither layout.
func ListSafetensorsFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".safetensors") {
			continue
		}
		if fi, err := os.Stat(filepath.Join(dir, e.Name())); err == nil && fi.Mode().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return names, nil // os.ReadDir sorts by name
}

func sortedNames(ts []safetensors.TensorInfo) []string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.Name
	}
	slices.Sort(names)
	return names
}

// pickleWeights lists the weight files in dir that are not safetensors
// (PyTorch pickles: .bin, .pt, .pth, .ckpt), at most three and "...".
func pickleWeights(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".bin", ".pt", ".pth", ".ckpt":
			if len(out) == 3 {
				return append(out, "...")
			}
			out = append(out, e.Name())
		}
	}
	return out
}

// exists reports whether path exists; errors other than "does not exist"
// (permissions) count as existing so that opening reports them.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil || !errors.Is(err, fs.ErrNotExist)
}

// ReadFileLimited reads a whole file of at most limit bytes, and fails
// without reading further when it is larger. Use it with MaxConfigSize and
// MaxIndexSize for config.json and index files: parsing them takes up to
// about 60 times the file size (see pyjson.Parse).
//
// A path that is not a regular file (a FIFO, a device such as /dev/zero,
// a directory) is an error wrapping regular.ErrNotRegular, found without
// blocking.
func ReadFileLimited(path string, limit int64) ([]byte, error) {
	f, _, err := regular.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("file is larger than %d bytes", limit)
	}
	return b, nil
}

// ioMsg returns the message of an I/O error without the path that a
// *fs.PathError repeats.
func ioMsg(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
