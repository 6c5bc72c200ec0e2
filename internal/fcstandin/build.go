package fcstandin

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Where the stand-in lives, relative to this package's folder: a module of
// its own (see the package doc), and its main package inside it.
const (
	serverDir  = "server"
	cmdPackage = "./cmd/fcstandin"
)

// TB is the part of testing.TB that Build and SpecDir use; *testing.T and
// *testing.B satisfy it. It is an interface of its own so that this
// package, which the stand-in binary links for the shared constants, does
// not import package testing.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Build compiles the stand-in binary once per test process (cached) and
// returns its path. A failed build fails the test. Call RemoveBuild from
// TestMain to delete the binary when the tests are done.
//
// The binary is built with the go command that runs the tests, in the
// stand-in's own module (internal/fcstandin/server), with that module's
// go.mod and go.sum: in a fresh clone the first build downloads its
// dependencies. The environment (GOFLAGS, GOPROXY, ...) is the test's.
//
// go test caches a package's result by the files its test process opened,
// not by what a go command it ran compiled; so Build also lists the
// folders of every non-standard package the stand-in is built from, and
// editing the stand-in (or a library package it uses) makes the results
// of the tests that use it stale, as when they imported it.
func Build(t TB) string {
	t.Helper()
	build.once.Do(func() {
		sweepStaleBuilds(os.TempDir(), time.Now().Add(-staleBuildAge))
		build.dir, build.err = os.MkdirTemp("", "fcstandin-build-")
		if build.err != nil {
			return
		}
		build.path = filepath.Join(build.dir, "firecracker")
		build.err = BuildTo(build.path)
	})
	if build.err != nil {
		t.Fatalf("fcstandin: %v", build.err)
	}
	return build.path
}

// staleBuildAge is how old a build folder must be before another test
// process removes it: far beyond any test binary's timeout, so only
// folders of processes that were killed before their TestMain could
// remove them qualify.
const staleBuildAge = 6 * time.Hour

// sweepStaleBuilds removes fcstandin-build-* folders in tmp last changed
// before cutoff: a killed test process leaves its build (≈ 14 MB) behind.
func sweepStaleBuilds(tmp string, cutoff time.Time) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, "fcstandin-build-*"))
	for _, d := range dirs {
		if st, err := os.Lstat(d); err == nil && st.IsDir() && st.ModTime().Before(cutoff) {
			os.RemoveAll(d)
		}
	}
}

// BuildTo builds the stand-in binary into the file out, as [Build] does
// but uncached and without a test: for a set-up that reports errors
// itself (the benchmarks in bench/).
func BuildTo(out string) error {
	gobin := goCommand()
	// This package's folder, from the go command rather than from the
	// source file name, which -trimpath would hide.
	self, err := goOutput(gobin, "", "list", "-f", "{{.Dir}}", "github.com/mvm-dev/microvm/internal/fcstandin")
	if err != nil {
		return err
	}
	dir := filepath.Join(strings.TrimSpace(self), serverDir)
	// A static binary, like Firecracker's: no dynamic loader or cgo
	// start-up work in every stand-in process.
	if _, err := goOutput(gobin, dir, "build", "-o", out, cmdPackage); err != nil {
		return err
	}
	deps, err := goOutput(gobin, dir, "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", cmdPackage)
	if err != nil {
		return err
	}
	for _, d := range strings.Fields(deps) {
		os.ReadDir(d) // recorded by go test as an input of the test
	}
	return nil
}

// goCommand returns the go command of the toolchain running the tests.
func goCommand() string {
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		return "go"
	}
	return gobin
}

// goOutput runs the go command in dir (static build, CGO_ENABLED=0) and
// returns its standard output; a failure carries its standard error.
func goOutput(gobin, dir string, args ...string) (string, error) {
	cmd := exec.Command(gobin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		where := ""
		if dir != "" {
			where = " (in " + dir + ")"
		}
		return "", fmt.Errorf("go %s%s: %w\n%s", strings.Join(args, " "), where, err, stderr.Bytes())
	}
	return string(out), nil
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
func SpecDir(t TB) string {
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
