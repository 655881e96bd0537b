package rules

import (
	"path/filepath"
	"testing"

	"github.com/qconv/qconv/formats/dtype"
)

const (
	shard1 = "model-00001-of-00002.safetensors"
	shard2 = "model-00002-of-00002.safetensors"
)

// f32 returns a tensorFix of a float32 vector of n zeros.
func f32(name string, n int64) tensorFix {
	return tensorFix{Name: name, DType: dtype.F32, Shape: []int64{n}}
}

// shardedDir writes each shard and, unless index is nil, the index: a
// string is written as is, anything else as JSON.
func shardedDir(shards map[string][]tensorFix, index any) func(t *testing.T, dir string) string {
	return func(t *testing.T, dir string) string {
		for name, ts := range shards {
			writeST(t, filepath.Join(dir, name), pt, ts)
		}
		switch x := index.(type) {
		case nil:
		case string:
			writeFile(t, filepath.Join(dir, "model.safetensors.index.json"), []byte(x))
		default:
			writeJSON(t, filepath.Join(dir, "model.safetensors.index.json"), x)
		}
		return dir
	}
}

// idx builds an index object; totalSize < 0 leaves total_size out.
func idx(totalSize int64, weightMap map[string]string) map[string]any {
	md := map[string]any{}
	if totalSize >= 0 {
		md["total_size"] = totalSize
	}
	return map[string]any{"metadata": md, "weight_map": weightMap}
}

var twoShards = map[string][]tensorFix{
	shard1: {f32("a", 4)},
	shard2: {f32("b", 2)},
}

var twoShardsMap = map[string]string{"a": shard1, "b": shard2}

var indexCases = []ruleCase{
	{rule: "IX001", name: "truncated-json", want: []string{"IX001"},
		build: shardedDir(twoShards, `{"weight_map": {"a": "`+shard1+`"`)},
	{rule: "IX001", name: "duplicate-key", want: []string{"IX001"},
		build: shardedDir(twoShards, `{"weight_map": {"a": "`+shard1+`", "a": "`+shard2+`"}}`)},
	{rule: "IX001", name: "extra-top-level-key", lookalike: true,
		build: shardedDir(twoShards, map[string]any{"weight_map": twoShardsMap, "format": "custom"})},
	{rule: "IX002", name: "missing-shard", want: []string{"IX002 b"},
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a", 4)}}, idx(-1, twoShardsMap))},
	{rule: "IX002", name: "all-present", lookalike: true, build: shardedDir(twoShards, idx(24, twoShardsMap))},
	{rule: "IX003", name: "tensor-in-other-shard", want: []string{"IX003 b"},
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a", 4)}, shard2: {f32("b", 2), f32("c", 1)}},
			idx(-1, map[string]string{"a": shard1, "b": shard1, "c": shard2}))},
	{rule: "IX003", name: "tensor-nowhere", want: []string{"IX003 z"},
		build: shardedDir(twoShards, idx(-1, map[string]string{"a": shard1, "b": shard2, "z": shard2}))},
	{rule: "IX003", name: "dotted-names", lookalike: true,
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a.b", 1)}, shard2: {f32("a.b.c", 1)}},
			idx(8, map[string]string{"a.b": shard1, "a.b.c": shard2}))},
	{rule: "IX004", name: "unlisted", want: []string{"IX004 extra"},
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a", 4), f32("extra", 1)}, shard2: {f32("b", 2)}}, idx(-1, twoShardsMap))},
	{rule: "IX004", name: "listed", lookalike: true,
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a", 4), f32("extra", 1)}, shard2: {f32("b", 2)}},
			idx(28, map[string]string{"a": shard1, "b": shard2, "extra": shard1}))},
	{rule: "IX005", name: "in-two-shards", want: []string{"IX005 a"},
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a", 4)}, shard2: {f32("a", 4), f32("b", 2)}}, idx(-1, twoShardsMap))},
	{rule: "IX005", name: "two-files-no-index", want: []string{"IX005 w"},
		build: shardedDir(map[string][]tensorFix{"model.safetensors": {f32("w", 1)}, "model-old.safetensors": {f32("w", 1)}}, nil)},
	{rule: "IX005", name: "two-files-distinct", lookalike: true,
		build: shardedDir(map[string][]tensorFix{"model.safetensors": {f32("w", 1)}, "extra.safetensors": {f32("w.bias", 1)}}, nil)},
	{rule: "IX006", name: "stray-file", want: []string{"IX006"},
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a", 4)}, shard2: {f32("b", 2)}, "model-00001-of-00003.safetensors": {f32("a", 4)}},
			idx(24, twoShardsMap))},
	{rule: "IX006", name: "all-referenced", lookalike: true,
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a", 4)}, shard2: {f32("b", 2)}, "model-00003-of-00003.safetensors": {f32("c", 1)}},
			idx(28, map[string]string{"a": shard1, "b": shard2, "c": "model-00003-of-00003.safetensors"}))},
	{rule: "IX007", name: "wrong-total", want: []string{"IX007"}, build: shardedDir(twoShards, idx(48, twoShardsMap))},
	{rule: "IX007", name: "right-total", lookalike: true, build: shardedDir(twoShards, idx(24, twoShardsMap))},
	{rule: "IX008", name: "parent-dir", want: []string{"IX008 b"},
		build: shardedDir(twoShards, idx(-1, map[string]string{"a": shard1, "b": "../" + shard2}))},
	{rule: "IX008", name: "dots-in-name", lookalike: true,
		build: shardedDir(map[string][]tensorFix{"model..v2.safetensors": {f32("a", 4)}}, idx(16, map[string]string{"a": "model..v2.safetensors"}))},
	{rule: "IX009", name: "both-layouts", want: []string{"IX009"},
		build: shardedDir(map[string][]tensorFix{"model.safetensors": {f32("a", 4), f32("b", 2)}, shard1: {f32("a", 4)}, shard2: {f32("b", 2)}},
			idx(24, twoShardsMap))},
	{rule: "IX009", name: "model-safetensors-in-index", lookalike: true,
		build: shardedDir(map[string][]tensorFix{shard1: {f32("a", 4)}, shard2: {f32("b", 2)}}, idx(24, twoShardsMap))},
}

func TestIndexRules(t *testing.T) {
	runCases(t, indexCases)
	checkCoverage(t, indexCases, "IX")
}
