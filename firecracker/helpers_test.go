package firecracker_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/fcstandin"
)

func TestMain(m *testing.M) {
	if child := os.Getenv(childEnv); child != "" {
		os.Exit(childMain(child))
	}
	code := m.Run()
	fcstandin.RemoveBuild()
	removeBuilds()
	os.Exit(code)
}

// renameDiesAt runs rt.Rename(from, to) until it reaches step, where the
// goroutine running it ends (runtime.Goexit) as if the process died there:
// no later step runs (Rename's deferred calls, which release its in-process
// locks, still do).
func renameDiesAt(t *testing.T, ctx context.Context, rt *firecracker.Runtime, step, from, to string) {
	t.Helper()
	restore := firecracker.SetRenameStepHook(func(s string) error {
		if s == step {
			runtime.Goexit() // the process dies here
		}
		return nil
	})
	defer restore()
	done := make(chan struct{})
	go func() {
		defer close(done)
		rt.Rename(ctx, from, to)
		t.Error("Rename returned: the crash did not happen")
	}()
	<-done
}

// standin returns a firecracker binary for tests: a wrapper script that
// execs the stand-in with the reference specs and the given FCSTANDIN_*
// settings (e.g. "FCSTANDIN_API=v1.0").
func standin(t testing.TB, env ...string) string {
	bin, _ := standinCtl(t, env...)
	return bin
}

// standinCtl is standin plus a function that changes the settings of the
// processes started from then on (set() with no arguments clears them).
func standinCtl(t testing.TB, env ...string) (bin string, set func(env ...string)) {
	t.Helper()
	real := fcstandin.Build(t)
	specDir := fcstandin.SpecDir(t)
	dir := t.TempDir()
	extra := filepath.Join(dir, "extra.env")
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	fmt.Fprintf(&b, "export FCSTANDIN_SPEC_DIR=%s\n", shellQuote(specDir))
	b.WriteString(exports(env))
	fmt.Fprintf(&b, "[ -f %s ] && . %s\n", shellQuote(extra), shellQuote(extra))
	fmt.Fprintf(&b, "exec %s \"$@\"\n", shellQuote(real))
	bin = filepath.Join(dir, "firecracker")
	if err := os.WriteFile(bin, []byte(b.String()), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, func(env ...string) {
		if err := os.WriteFile(extra, []byte(exports(env)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func exports(env []string) string {
	var b strings.Builder
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
	}
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// guestFiles makes a kernel and a root drive and returns their paths.
func guestFiles(t testing.TB) (kernel, rootfs string) {
	t.Helper()
	dir := t.TempDir()
	kernel = filepath.Join(dir, "vmlinux")
	rootfs = filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(kernel, []byte("\x7fELF stand-in kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootfs, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return kernel, rootfs
}

// testSpec returns a small valid spec with real files.
func testSpec(t testing.TB) microvm.Spec {
	kernel, rootfs := guestFiles(t)
	return microvm.Spec{
		Kernel:    kernel,
		RootDrive: microvm.Drive{Path: rootfs},
		VCPUs:     1,
		MemoryMiB: 16,
	}
}

// open opens a runtime over state with the stand-in bin.
func open(t testing.TB, state, bin string, mod ...func(*firecracker.Config)) *firecracker.Runtime {
	t.Helper()
	cfg := firecracker.Config{
		StateDir:       state,
		FirecrackerBin: bin,
		ReadyTimeout:   5 * time.Second,
		StopTimeout:    2 * time.Second,
	}
	for _, m := range mod {
		m(&cfg)
	}
	rt, err := firecracker.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return rt
}

// newRuntime opens a runtime over a fresh state dir and closes it at the
// end of the test.
func newRuntime(t testing.TB, env ...string) (*firecracker.Runtime, string) {
	t.Helper()
	state := t.TempDir()
	rt := open(t, state, standin(t, env...))
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	return rt, state
}

// destroyAll destroys every VM of rt (ignoring a closed runtime).
func destroyAll(t testing.TB, rt microvm.Runtime) {
	ctx := context.Background()
	vms, err := rt.List(ctx)
	if err != nil {
		return
	}
	for _, vm := range vms {
		if _, err := rt.Destroy(ctx, vm.ID); err != nil {
			t.Errorf("cleanup: Destroy(%q): %v", vm.ID, err)
		}
	}
}

// procsUnder returns the pids of live processes whose command line or
// working directory mentions dir (the state dir of a test).
func procsUnder(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		cwd, _ := os.Readlink("/proc/" + e.Name() + "/cwd")
		if bytes.Contains(cmd, []byte(dir)) || strings.HasPrefix(cwd, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// assertClean fails unless no process runs under state and the VM id has
// no directory or record left.
func assertClean(t testing.TB, state, id string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := procsUnder(state)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left under %s: %v", state, pids)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range []string{
		filepath.Join(state, "vms", id),
		filepath.Join(state, "registry", "vm", id+".json"),
	} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(state, "vms")); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if slices.Contains(names, id) {
			t.Errorf("vms/ still holds %q: %v", id, names)
		}
	}
}

// kill sends SIGKILL to the VM's process.
func kill(t testing.TB, rt microvm.Runtime, id string) {
	t.Helper()
	vm, err := rt.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
	if vm.Backend.PID == 0 {
		t.Fatalf("VM %q has no process", id)
	}
	if err := syscall.Kill(vm.Backend.PID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", vm.Backend.PID, err)
	}
}

// waitStatus polls Get until the VM has status st, for up to 5s.
func waitStatus(t testing.TB, rt microvm.Runtime, id string, st microvm.Status) microvm.VM {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		vm, err := rt.Get(context.Background(), id)
		if err != nil {
			t.Fatalf("Get(%q): %v", id, err)
		}
		if vm.Status == st {
			return vm
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %q is %s after 5s, want %s (last error %q)", id, vm.Status, st, vm.LastError)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// builds holds the binaries buildCmd made, by package.
var builds struct {
	sync.Mutex
	bins map[string]string
	dirs []string
}

// buildCmd builds the main package pkg once per test process, as name in a
// temporary directory (removed by TestMain), and returns its path. A failed
// build fails the test.
func buildCmd(t testing.TB, pkg, name string) string {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	if bin, ok := builds.bins[pkg]; ok {
		return bin
	}
	dir, err := os.MkdirTemp("", "mvm-test-bin-")
	if err != nil {
		t.Fatal(err)
	}
	builds.dirs = append(builds.dirs, dir)
	bin := filepath.Join(dir, name)
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	if builds.bins == nil {
		builds.bins = map[string]string{}
	}
	builds.bins[pkg] = bin
	return bin
}

// uffdBin returns the page server binary (cmd/mvm-uffd).
func uffdBin(t testing.TB) string {
	return buildCmd(t, "github.com/mvm-dev/microvm/cmd/mvm-uffd", "mvm-uffd")
}

func removeBuilds() {
	builds.Lock()
	defer builds.Unlock()
	for _, d := range builds.dirs {
		os.RemoveAll(d)
	}
}
