package checkpoint

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qconv/qconv/internal/pyjson"
)

// IndexFileName is the name of the index of a sharded checkpoint.
const IndexFileName = "model.safetensors.index.json"

// MaxIndexSize is the largest index file Open reads, in bytes. Real indexes
// are well under a megabyte even for thousands of tensors.
const MaxIndexSize = 64 << 20

// An Index is the content of model.safetensors.index.json: which shard file
// holds each tensor, and metadata.
type Index struct {
	// Metadata is the "metadata" object, or nil if the file has none.
	// transformers writes {"total_parameters": N, "total_size": N}.
	Metadata *pyjson.Value
	// TotalSize is metadata.total_size, or -1 if absent.
	TotalSize int64
	// TotalParameters is metadata.total_parameters, or -1 if absent.
	TotalParameters int64
	// WeightMap lists the "weight_map" entries in file order.
	WeightMap []IndexEntry
}

// An IndexEntry maps a tensor name to the shard file that holds it.
type IndexEntry struct {
	Tensor string
	File   string // file name relative to the checkpoint directory
}

// Files returns the distinct shard file names of the index, sorted.
func (ix *Index) Files() []string {
	seen := make(map[string]bool)
	var files []string
	for _, e := range ix.WeightMap {
		if !seen[e.File] {
			seen[e.File] = true
			files = append(files, e.File)
		}
	}
	slices.Sort(files)
	return files
}

// FileOf returns the shard file that the index names for tensor. It takes
// time linear in the size of the index.
func (ix *Index) FileOf(tensor string) (string, bool) {
	for _, e := range ix.WeightMap {
		if e.Tensor == tensor {
			return e.File, true
		}
	}
	return "", false
}

// ParseIndex parses and validates the bytes of a model.safetensors.index.json.
//
// The document must be a JSON object with a "weight_map" object mapping each
// tensor name to a shard file name (a non-empty string), and optionally a
// "metadata" object (or null); other top-level keys are ignored, as
// transformers ignores them. metadata.total_size and
// metadata.total_parameters, if present, must be non-negative integers
// (an integral float such as 1024.0 is accepted). Duplicate keys anywhere
// are an error, since Python would silently keep the last one. Shard file
// names must be plain names in the checkpoint directory: no path separators
// ('/' or '\'), not "." or "..", not absolute, no NUL.
//
// Errors are *Problem values with Code CodeIndexInvalid or
// CodeIndexUnsafePath and an empty File (the caller knows the file name).
func ParseIndex(b []byte) (*Index, error) {
	v, err := pyjson.Parse(b)
	if err != nil {
		return nil, &Problem{Code: CodeIndexInvalid, Msg: "not valid JSON (" + strings.TrimPrefix(err.Error(), "pyjson: ") + ")", Err: err}
	}
	if v.Kind() != pyjson.KindObject {
		return nil, indexErr("", "index is a JSON %s, not an object", v.Kind())
	}
	ix := &Index{TotalSize: -1, TotalParameters: -1}
	if md := v.Get("metadata"); md != nil && !md.IsNull() {
		if md.Kind() != pyjson.KindObject {
			return nil, indexErr("", "metadata is a JSON %s, not an object", md.Kind())
		}
		ix.Metadata = md
		if ix.TotalSize, err = metadataCount(md, "total_size"); err != nil {
			return nil, err
		}
		if ix.TotalParameters, err = metadataCount(md, "total_parameters"); err != nil {
			return nil, err
		}
	}
	wm := v.Get("weight_map")
	if wm == nil {
		return nil, indexErr("", "no weight_map")
	}
	if wm.Kind() != pyjson.KindObject {
		return nil, indexErr("", "weight_map is a JSON %s, not an object", wm.Kind())
	}
	if wm.Len() == 0 {
		return nil, indexErr("", "weight_map is empty")
	}
	ix.WeightMap = make([]IndexEntry, 0, wm.Len())
	for _, m := range wm.Members() {
		file, ok := m.Value.AsString()
		if !ok {
			return nil, indexErr(m.Key, "weight_map value is a JSON %s, not a file name", m.Value.Kind())
		}
		if msg := checkFileName(file); msg != "" {
			return nil, &Problem{Code: CodeIndexUnsafePath, Tensor: m.Key, Msg: fmt.Sprintf("shard file name %q %s", file, msg)}
		}
		ix.WeightMap = append(ix.WeightMap, IndexEntry{Tensor: m.Key, File: file})
	}
	return ix, nil
}

func indexErr(tensor, format string, args ...any) *Problem {
	return &Problem{Code: CodeIndexInvalid, Tensor: tensor, Msg: fmt.Sprintf(format, args...)}
}

// metadataCount reads a non-negative integer member of metadata, or -1.
func metadataCount(md *pyjson.Value, key string) (int64, error) {
	v := md.Get(key)
	if v == nil {
		return -1, nil
	}
	if n, ok := v.Int64(); ok && n >= 0 {
		return n, nil
	}
	if f, ok := v.Float64(); ok && f >= 0 && f < math.MaxInt64 && f == math.Trunc(f) {
		return int64(f), nil
	}
	return -1, indexErr("", "metadata.%s is %s, not a non-negative integer", key, describe(v))
}

func describe(v *pyjson.Value) string {
	if v.Kind() == pyjson.KindNumber {
		return v.Literal()
	}
	return "a JSON " + v.Kind().String()
}

// checkFileName returns why name is not a safe shard file name, or "".
func checkFileName(name string) string {
	switch {
	case name == "":
		return "is empty"
	case name == "." || name == "..":
		return "is not a file name"
	case strings.ContainsAny(name, `/\`):
		return "contains a path separator"
	case strings.ContainsRune(name, 0):
		return "contains a NUL byte"
	case filepath.IsAbs(name) || filepath.VolumeName(name) != "":
		return "is an absolute path"
	}
	return ""
}

// NewIndex returns the index transformers writes for a sharded checkpoint:
// metadata {"total_parameters", "total_size"} and the given weight map.
// Pass -1 to leave a total out.
//
// transformers (save_pretrained) sets total_parameters to
// model.num_parameters(), the logical parameter count (see
// LogicalParameters), and total_size to the sum of the byte sizes of all
// saved tensors, which is the sum of the shards' data sections (headers
// excluded): TotalSize computes it.
func NewIndex(totalParameters, totalSize int64, entries []IndexEntry) *Index {
	md := pyjson.Object()
	if totalParameters >= 0 {
		md.Set("total_parameters", pyjson.Int(totalParameters))
	}
	if totalSize >= 0 {
		md.Set("total_size", pyjson.Int(totalSize))
	}
	return &Index{
		Metadata:        md,
		TotalSize:       totalSize,
		TotalParameters: totalParameters,
		WeightMap:       slices.Clone(entries),
	}
}

// Marshal returns the index file bytes as transformers writes them:
// json.dumps(index, indent=2, sort_keys=True) + "\n", where index is
// {"metadata": Metadata, "weight_map": {tensor: file}}. Metadata members
// other than the totals are kept; TotalSize and TotalParameters, when
// non-negative, replace the values in Metadata. A nil Metadata with both
// totals negative writes "metadata": {}.
//
// Marshal reports an error if a tensor appears twice in WeightMap (a JSON
// object cannot hold it).
func (ix *Index) Marshal() ([]byte, error) {
	md := pyjson.Object()
	if ix.Metadata != nil && ix.Metadata.Kind() == pyjson.KindObject {
		md = ix.Metadata.Clone()
	}
	if ix.TotalParameters >= 0 {
		md.Set("total_parameters", pyjson.Int(ix.TotalParameters))
	}
	if ix.TotalSize >= 0 {
		md.Set("total_size", pyjson.Int(ix.TotalSize))
	}
	members := make([]pyjson.Member, 0, len(ix.WeightMap))
	seen := make(map[string]bool, len(ix.WeightMap))
	for _, e := range ix.WeightMap {
		if seen[e.Tensor] {
			return nil, fmt.Errorf("checkpoint: index: tensor %q listed twice", e.Tensor)
		}
		seen[e.Tensor] = true
		members = append(members, pyjson.Member{Key: e.Tensor, Value: pyjson.String(e.File)})
	}
	wm := pyjson.Object(members...)
	root := pyjson.Object(pyjson.Member{Key: "metadata", Value: md}, pyjson.Member{Key: "weight_map", Value: wm})
	return append(root.MarshalIndentSorted(), '\n'), nil
}
