package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// k8sJob is what TestK8sIndexedJob takes from examples/k8s-indexed-job.yaml.
type k8sJob struct {
	completions int
	command     []string // the container's command
	mountPath   string   // where the models volume is mounted
	finalize    []string // the finalize command in the closing comment
}

// readK8sJob reads the example with a few patterns instead of a YAML
// library (the module has no YAML dependency): the container command must
// stay a flow sequence of double-quoted strings, which is also JSON.
func readK8sJob(t *testing.T, path string) k8sJob {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	var job k8sJob
	m := regexp.MustCompile(`(?m)^\s+completions:\s*(\d+)\s*$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("%s: no spec.completions", path)
	}
	job.completions, _ = strconv.Atoi(m[1])
	m = regexp.MustCompile(`(?ms)^\s+command:\s*(\[.*?\])\s*$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("%s: no container command written as a flow sequence [\"qconv\", ...]", path)
	}
	if err := json.Unmarshal([]byte(m[1]), &job.command); err != nil {
		t.Fatalf("%s: container command %s: %v (keep it a list of double-quoted strings)", path, m[1], err)
	}
	m = regexp.MustCompile(`mountPath:\s*([^,}\s]+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("%s: no volume mountPath", path)
	}
	job.mountPath = m[1]
	m = regexp.MustCompile(`(?m)^#\s+(qconv convert .* --finalize)\s*$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("%s: no finalize command (a comment line \"#   qconv convert ... --finalize\")", path)
	}
	job.finalize = strings.Fields(m[1])
	return job
}

// TestK8sIndexedJob runs the container command of
// examples/k8s-indexed-job.yaml as the Job's pods would: once for each
// JOB_COMPLETION_INDEX, then the finalize command from the same file, and
// compares the result byte for byte with a one-process conversion. The
// volume is a temporary directory holding the tiny golden bf16 model under
// the example's SRC name; the one change to the commands is a smaller
// --max-shard-size, so that the tiny model gets several output files.
func TestK8sIndexedJob(t *testing.T) {
	job := readK8sJob(t, filepath.Join("..", "..", "examples", "k8s-indexed-job.yaml"))
	if job.completions < 2 || len(job.command) < 3 || job.command[0] != "qconv" || job.finalize[0] != "qconv" {
		t.Fatalf("unexpected example: %+v", job)
	}
	if !slices.Contains(job.command, "auto/"+strconv.Itoa(job.completions)) {
		t.Fatalf("container command %q lacks --shard auto/%d (completions: %d)", job.command, job.completions, job.completions)
	}
	vol := t.TempDir()
	adapt := func(cmd []string) []string {
		out := slices.Clone(cmd[1:]) // without "qconv"
		for i, a := range out {
			if rest, ok := strings.CutPrefix(a, job.mountPath+"/"); ok {
				out[i] = filepath.Join(vol, rest)
			}
			if a == "--max-shard-size" && i+1 < len(out) {
				out[i+1] = "100KB"
			}
		}
		return out
	}
	parts, finalize := adapt(job.command), adapt(job.finalize)
	src, dst := parts[1], parts[2]
	if !strings.HasPrefix(src, vol) || !strings.HasPrefix(dst, vol) || finalize[1] != src || finalize[2] != dst {
		t.Fatalf("SRC and DST of the container command (%q) and the finalize command (%q) should be the same paths under %s", parts[1:3], finalize[1:3], job.mountPath)
	}
	copyFlatDir(t, filepath.Join(models, "tiny-llama-bf16"), src)

	t.Setenv("SLURM_ARRAY_TASK_ID", "")
	for i := range job.completions {
		t.Setenv("JOB_COMPLETION_INDEX", strconv.Itoa(i))
		if code, stdout, stderr := qconv(parts...); code != exitOK {
			t.Fatalf("pod %d: qconv %s: exit %d\n%s%s", i, strings.Join(parts, " "), code, stdout, stderr)
		}
	}
	t.Setenv("JOB_COMPLETION_INDEX", "")
	if code, stdout, stderr := qconv(finalize...); code != exitOK {
		t.Fatalf("qconv %s: exit %d\n%s%s", strings.Join(finalize, " "), code, stdout, stderr)
	}

	// One process: the finalize command's flags, without --finalize.
	one := filepath.Join(t.TempDir(), "one")
	args := append([]string{"convert", src, one}, slices.DeleteFunc(slices.Clone(finalize[3:]), func(s string) bool { return s == "--finalize" })...)
	if code, stdout, stderr := qconv(append(args, "--progress", "never")...); code != exitOK {
		t.Fatalf("one process: exit %d\n%s%s", code, stdout, stderr)
	}
	want, _ := os.ReadDir(one)
	got, _ := os.ReadDir(dst)
	if len(want) < 4 || len(got) != len(want) {
		t.Fatalf("%d files from the Job, %d from one process (want several shards)", len(got), len(want))
	}
	for _, e := range want {
		a, _ := os.ReadFile(filepath.Join(one, e.Name()))
		b, err := os.ReadFile(filepath.Join(dst, e.Name()))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between the Indexed Job and one process (%v)", e.Name(), err)
		}
	}
}

func copyFlatDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
