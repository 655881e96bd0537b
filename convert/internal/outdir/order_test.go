package outdir

import (
	"slices"
	"testing"
)

func TestStateDictCompare(t *testing.T) {
	names := []string{"model.layers.10.a.weight", "model.layers.2.a.bias", "model.layers.2.a.weight", "model.layers.1.b.weight", "model.layers.02.a.weight", "lm_head.weight", "model.norm.weight"}
	slices.SortFunc(names, StateDictCompare)
	want := []string{"lm_head.weight", "model.layers.1.b.weight", "model.layers.2.a.weight", "model.layers.02.a.weight", "model.layers.2.a.bias", "model.layers.10.a.weight", "model.norm.weight"}
	if !slices.Equal(names, want) {
		t.Errorf("got  %q\nwant %q", names, want)
	}
}

// TestSplit follows huggingface_hub's split_state_dict_into_shards_factory
// by hand: a tensor larger than the limit is a shard of its own, placed
// before the shard still being filled.
func TestSplit(t *testing.T) {
	got := Split([]int64{4, 4, 3, 20, 5, 10, 0}, 10)
	want := [][]int{{0, 1}, {3}, {2, 4}, {5, 6}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("Split: %v, want %v", got, want)
	}
	if got := FileName(1, 3); got != "model-00002-of-00003.safetensors" {
		t.Errorf("FileName(1, 3) = %q", got)
	}
	if got := FileName(0, 1); got != "model.safetensors" {
		t.Errorf("FileName(0, 1) = %q", got)
	}
}
