package fcstandin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// cmdPackage is the import path of the stand-in's main package.
const cmdPackage = "github.com/mvm-dev/microvm/internal/fcstandin/cmd/fcstandin"

var build struct {
	once sync.Once
	dir  string
	path string
	out  []byte
	err  error
}

// Build compiles the stand-in binary once per test process (cached) and
// returns its path. A failed build fails the test. Call RemoveBuild from
// TestMain to delete the binary when the tests are done.
func Build(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "fcstandin-build-")
		if build.err != nil {
			return
		}
		build.path = filepath.Join(build.dir, "firecracker")
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		cmd := exec.Command(gobin, "build", "-o", build.path, cmdPackage)
		// A static binary, like Firecracker's: no dynamic loader or cgo
		// start-up work in every stand-in process.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.out, build.err = cmd.CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("fcstandin: go build %s: %v\n%s", cmdPackage, build.err, build.out)
	}
	return build.path
}

// RemoveBuild deletes the binary made by Build (for TestMain).
func RemoveBuild() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

// SpecDir locates the reference specs (FCSTANDIN_SPEC_DIR, MVM_REFERENCE_DIR,
// or shared/reference above the working directory). When they are missing
// the test is skipped, or fails when CI=true.
func SpecDir(t testing.TB) string {
	t.Helper()
	wd, _ := os.Getwd()
	dir, err := FindSpecDir(os.Getenv, wd)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("fcstandin: %v", err)
		}
		t.Skipf("fcstandin: %v", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("fcstandin: %v", err)
	}
	return abs
}
