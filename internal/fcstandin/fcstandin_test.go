package fcstandin

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveBuild()
	os.Exit(code)
}

// specFolder makes a folder holding both spec files (empty: only their
// presence is checked).
func specFolder(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{SpecFileLatest, SpecFileV10} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFindSpecDir(t *testing.T) {
	root := t.TempDir()
	shared := specFolder(t, filepath.Join(root, "shared", "reference"))
	other := specFolder(t, filepath.Join(root, "other"))
	deep := filepath.Join(root, "repo", "pkg", "sub")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	none := env(nil)

	// Walking up from a start folder finds shared/reference.
	if got, err := FindSpecDir(none, deep); err != nil || got != shared {
		t.Fatalf("walk up from %s: %q, %v; want %q", deep, got, err, shared)
	}
	// Empty start folders are skipped; the first that finds one wins.
	nearer := specFolder(t, filepath.Join(root, "repo", "shared", "reference"))
	if got, err := FindSpecDir(none, "", deep, root); err != nil || got != nearer {
		t.Fatalf("several starts: %q, %v; want %q", got, err, nearer)
	}
	if got, err := FindSpecDir(none, "", root, deep); err != nil || got != shared {
		t.Fatalf("several starts: %q, %v; want %q", got, err, shared)
	}
	// FCSTANDIN_SPEC_DIR wins over MVM_REFERENCE_DIR, which wins over the walk.
	both := env(map[string]string{"FCSTANDIN_SPEC_DIR": other, "MVM_REFERENCE_DIR": shared})
	if got, err := FindSpecDir(both, deep); err != nil || got != other {
		t.Fatalf("FCSTANDIN_SPEC_DIR: %q, %v; want %q", got, err, other)
	}
	if got, err := FindSpecDir(env(map[string]string{"MVM_REFERENCE_DIR": other}), deep); err != nil || got != other {
		t.Fatalf("MVM_REFERENCE_DIR: %q, %v; want %q", got, err, other)
	}

	// A variable naming a folder without the specs is an error naming the
	// variable, not a fall-back to the walk.
	empty := t.TempDir()
	_, err := FindSpecDir(env(map[string]string{"MVM_REFERENCE_DIR": empty}), deep)
	if !errors.Is(err, ErrSpecNotFound) || !strings.Contains(err.Error(), "MVM_REFERENCE_DIR="+empty) {
		t.Fatalf("MVM_REFERENCE_DIR without specs: %v", err)
	}
	// A spec "file" that is a folder does not count.
	odd := t.TempDir()
	specFolder(t, odd)
	if err := os.Remove(filepath.Join(odd, SpecFileV10)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(odd, SpecFileV10), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = FindSpecDir(env(map[string]string{"FCSTANDIN_SPEC_DIR": odd}))
	if !errors.Is(err, ErrSpecNotFound) || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("spec file is a folder: %v", err)
	}
	// Nothing found (no variable, no start folder; a walk from any folder
	// could meet a shared/reference of this machine): the error says which
	// variable to set.
	_, err = FindSpecDir(none, "")
	if !errors.Is(err, ErrSpecNotFound) || !strings.Contains(err.Error(), "set FCSTANDIN_SPEC_DIR") {
		t.Fatalf("nothing found: %v", err)
	}
}

// TestBuild builds the stand-in from its own module and runs it: it reports
// the version of each API flavour's spec, so the binary is the stand-in and
// it reads the flavour names defined here.
func TestBuild(t *testing.T) {
	bin := Build(t)
	if again := Build(t); again != bin {
		t.Fatalf("second Build: %s, want the cached %s", again, bin)
	}
	spec := SpecDir(t)
	for api, want := range map[string]string{APILatest: "Firecracker v1.17.0-dev", APIv10: "Firecracker v1.0.0"} {
		cmd := exec.Command(bin, "--version")
		cmd.Env = append(os.Environ(), "FCSTANDIN_SPEC_DIR="+spec, "FCSTANDIN_API="+api, "FCSTANDIN_SPEC_CACHE=off")
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Fatalf("FCSTANDIN_API=%s %s --version: %v, %q; want %q", api, bin, err, out, want)
		}
	}
}

// standinOnly are the modules the stand-in needs to check requests against
// the API specification (directly or through kin-openapi) and the library
// does not: they must stay out of the library's module graph, where every
// program depending on mvm would inherit them.
var standinOnly = []string{
	"github.com/getkin/kin-openapi",
	"sigs.k8s.io/yaml",
	"github.com/gorilla/mux",
	"github.com/santhosh-tekuri/jsonschema/v6",
	"github.com/go-openapi/jsonpointer",
	"github.com/go-openapi/swag/jsonname",
	"go.yaml.in/yaml/v4",
}

// TestLibraryModuleGraph checks that the stand-in's dependencies are
// required by the stand-in's module and appear nowhere in the library's
// module graph (go mod graph: every requirement of every module, whether
// or not a package is built from it).
func TestLibraryModuleGraph(t *testing.T) {
	gobin := goCommand()
	serverMod, err := os.ReadFile(filepath.Join(serverDir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range standinOnly {
		if !strings.Contains(string(serverMod), "\t"+m+" ") {
			t.Errorf("%s/go.mod does not require %s: update standinOnly to what the stand-in uses", serverDir, m)
		}
	}
	graph, err := goOutput(gobin, "", "mod", "graph")
	if err != nil {
		t.Fatal(err)
	}
	main, err := goOutput(gobin, "", "list", "-m")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(main); got != "github.com/mvm-dev/microvm" {
		t.Fatalf("main module %q: the test must run in the library's module", got)
	}
	lines := strings.Split(strings.TrimSpace(graph), "\n")
	if len(lines) < 10 {
		t.Fatalf("go mod graph: %d lines, expected the library's whole graph:\n%s", len(lines), graph)
	}
	for _, line := range lines {
		for _, node := range strings.Fields(line) {
			path, _, _ := strings.Cut(node, "@")
			for _, m := range standinOnly {
				if path == m {
					t.Errorf("library module graph has %s (%q); it belongs to the stand-in's module only", m, line)
				}
			}
		}
	}
}

// TestSweepStaleBuilds: build folders older than the cutoff go (a killed
// test process left them); a fresh one and folders of other names stay.
func TestSweepStaleBuilds(t *testing.T) {
	tmp := t.TempDir()
	old := time.Now().Add(-2 * staleBuildAge)
	mk := func(name string, mtime time.Time) string {
		d := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(d, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return d
	}
	stale := mk("fcstandin-build-1", old)
	fresh := mk("fcstandin-build-2", time.Now())
	other := mk("other-build-3", old)
	sweepStaleBuilds(tmp, time.Now().Add(-staleBuildAge))
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale build folder still there: %v", err)
	}
	for _, d := range []string{fresh, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}
