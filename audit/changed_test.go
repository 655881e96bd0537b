package audit

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestCheckpointDirs(t *testing.T) {
	root := t.TempDir()
	mk := func(rel string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("single/model.safetensors")
	mk("single/config.json")
	mk("single/README.md")
	mk("sharded/model.safetensors.index.json")
	mk("sharded/model-00001-of-00002.safetensors")
	mk("sharded/config.json")
	mk("onlyindex/model.safetensors.index.json")
	mk("adapter/adapter_model.safetensors")
	mk("adapter/adapter_config.json")
	mk("tool/config.json")                  // another tool's config: no checkpoint here
	mk("fakes/notes.safetensors.txt")       // look-alike names
	mk("fakes/config.json.bak")             // "
	mk("fakes/dir.safetensors/config.json") // a directory named *.safetensors is not a file
	mk("linked/blob")                       // Hub cache style: a symlink to a blob
	if err := os.Symlink("blob", filepath.Join(root, "linked", "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere", filepath.Join(root, "fakes", "dangling.safetensors")); err != nil {
		t.Fatal(err)
	}
	j := func(rel string) string { return filepath.Join(root, rel) }

	cases := []struct {
		name        string
		in          []string
		dirs, ignor []string
	}{
		{"one file", []string{j("single/model.safetensors")}, []string{j("single")}, nil},
		{"a directory once for all its members",
			[]string{j("sharded/config.json"), j("sharded/model-00001-of-00002.safetensors"), j("sharded/model.safetensors.index.json"), j("sharded") + "/"},
			[]string{j("sharded")}, nil},
		{"several directories, sorted",
			[]string{j("single/config.json"), j("onlyindex/model.safetensors.index.json"), j("adapter/adapter_config.json")},
			[]string{j("adapter"), j("onlyindex"), j("single")}, nil},
		{"deleted shard names its directory", []string{j("sharded/model-00002-of-00002.safetensors")}, []string{j("sharded")}, nil},
		{"other files ignored", []string{j("single/README.md"), j("single/tokenizer.json")}, nil,
			[]string{j("single/README.md"), j("single/tokenizer.json")}},
		{"config.json of no checkpoint", []string{j("tool/config.json")}, nil, []string{j("tool/config.json")}},
		{"directory gone", []string{j("gone/model.safetensors")}, nil, []string{j("gone/model.safetensors")}},
		{"look-alikes", []string{j("fakes/notes.safetensors.txt"), j("fakes/config.json.bak"), j("fakes/dir.safetensors/config.json"), j("fakes/dangling.safetensors")},
			nil, []string{j("fakes/notes.safetensors.txt"), j("fakes/config.json.bak"), j("fakes/dir.safetensors/config.json"), j("fakes/dangling.safetensors")}},
		{"symlinked weights count", []string{j("linked/model.safetensors")}, []string{j("linked")}, nil},
		{"a directory argument stands for itself", []string{j("tool")}, []string{j("tool")}, nil},
		{"nothing", nil, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dirs, ignored := CheckpointDirs(c.in)
			if !slices.Equal(dirs, c.dirs) || !slices.Equal(ignored, c.ignor) {
				t.Errorf("CheckpointDirs(%q)\n = %q, ignored %q\nwant %q, ignored %q", c.in, dirs, ignored, c.dirs, c.ignor)
			}
		})
	}

	// Relative paths, as pre-commit passes them from the repository root.
	t.Chdir(root)
	dirs, ignored := CheckpointDirs([]string{"single/model.safetensors", "./single/config.json", "model.safetensors"})
	if want := []string{"single"}; !slices.Equal(dirs, want) || !slices.Equal(ignored, []string{"model.safetensors"}) {
		t.Errorf("relative: %q ignored %q, want %q ignored [model.safetensors]", dirs, ignored, want)
	}
}
