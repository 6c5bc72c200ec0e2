package realfc

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	root := t.TempDir()
	fc := filepath.Join(root, "shared", "firecracker")
	deep := filepath.Join(root, "repo", "pkg", "sub")
	for _, d := range []string{fc, deep} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, mode := range map[string]os.FileMode{
		"firecracker-v1.14.2": 0o755, "firecracker-v1.0.0": 0o755, "firecracker-v1.7.0": 0o755,
		"firecracker-v1.9.0": 0o644, // not executable: ignored
		"firecracker-vX":     0o755, // not a version: ignored
		"jailer-v1.7.0":      0o755, "vmlinux-6.1": 0o644,
	} {
		if err := os.WriteFile(filepath.Join(fc, name), nil, mode); err != nil {
			t.Fatal(err)
		}
	}
	noEnv := func(string) string { return "" }
	dir, bins, err := Find(noEnv, deep)
	if err != nil || dir != fc {
		t.Fatalf("Find from %s: %q, %v; want %s", deep, dir, err, fc)
	}
	var names []string
	for _, b := range bins {
		names = append(names, b.Name())
	}
	if got := filepath.Join(names...); got != filepath.Join("v1.0.0", "v1.7.0", "v1.14.2") {
		t.Errorf("binaries %q, want v1.0.0 v1.7.0 v1.14.2 (oldest first, by number)", names)
	}
	if !bins[1].AtLeast(1, 7) || bins[1].AtLeast(1, 8) || bins[0].AtLeast(1, 1) || !bins[2].AtLeast(1, 7) {
		t.Error("AtLeast disagrees with the versions")
	}
	if bins[2].Path != filepath.Join(fc, "firecracker-v1.14.2") {
		t.Errorf("path %q", bins[2].Path)
	}

	// The environment variable wins over the search.
	env := func(k string) string {
		if k == EnvSharedDir {
			return filepath.Join(root, "shared")
		}
		return ""
	}
	if d, _, err := Find(env, "/"); err != nil || d != fc {
		t.Errorf("Find with %s: %q, %v", EnvSharedDir, d, err)
	}
	// Nothing found: ErrNotFound naming the variable. The walk up stops
	// at the first shared/firecracker, here an empty one, so a real
	// shared folder above the temporary directory (a fresh clone's CI
	// has /tmp/shared) does not answer for it.
	bare := t.TempDir()
	if err := os.MkdirAll(filepath.Join(bare, "shared", "firecracker"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		getenv func(string) string
		start  string
	}{
		{noEnv, bare},
		{func(string) string { return t.TempDir() }, "/"},
	} {
		if _, _, err := Find(c.getenv, c.start); !errors.Is(err, ErrNotFound) {
			t.Errorf("Find(%s) without binaries: %v, want ErrNotFound", c.start, err)
		}
	}
}

// TestBinariesHere finds the real builds beside this repository (or
// fails under CI=true, skips elsewhere) and checks the three the tests
// are written for.
func TestBinariesHere(t *testing.T) {
	bins := Binaries(t)
	if len(bins) < 2 {
		t.Errorf("found %d real firecracker builds, want the oldest and a newer one", len(bins))
	}
	if k := Kernel(t); filepath.Base(k) != "vmlinux-6.1" {
		t.Errorf("kernel %s", k)
	}
	if ends := Ends(t); ends[0] != bins[0] || ends[len(ends)-1] != bins[len(bins)-1] {
		t.Errorf("Ends = %v, want the first and last of %v", ends, bins)
	}
}

// TestMissingFailsUnderCI: without the binaries, Binaries fails the test
// when CI=true and skips it otherwise (checked in a child process).
func TestMissingFailsUnderCI(t *testing.T) {
	if os.Getenv("REALFC_CHILD") != "" {
		Binaries(t)
		return
	}
	for _, c := range []struct {
		ci   string
		want string
	}{{"true", "--- FAIL"}, {"", "--- SKIP"}} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestMissingFailsUnderCI$", "-test.v")
		cmd.Env = append(os.Environ(), "REALFC_CHILD=1", "CI="+c.ci, EnvSharedDir+"="+t.TempDir())
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), c.want) || !strings.Contains(string(out), "real firecracker binaries not found") {
			t.Errorf("CI=%q without binaries: want %q and the reason:\n%s", c.ci, c.want, out)
		}
	}
}
