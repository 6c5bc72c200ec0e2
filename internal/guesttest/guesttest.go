// Package guesttest gives tests real guests: the mvm-agent binary built
// from this repository, a minimal agent image built with package image, and
// the real Firecracker binaries and guest kernel of the workplace's shared
// folder (../shared/firecracker beside the repository, or
// MVM_SHARED_DIR/firecracker), found by package realfc.
//
// What a test needs and does not find is a skip with one line, or a failure
// when CI=true (CI installs e2fsprogs and busybox-static and has the shared
// folder); /dev/kvm is never required by CI: tests that need it call
// RequireKVM, which skips.
package guesttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/internal/realfc"
)

// agentPackage is the import path of the guest program.
const agentPackage = "github.com/mvm-dev/microvm/cmd/mvm-agent"

// missing skips t, or fails it when CI=true.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	realfc.Missing(t, fmt.Errorf(format, args...))
}

// Agent builds mvm-agent (static: CGO_ENABLED=0) into a temporary directory
// of t and returns its path. The go command's cache makes later builds
// cheap (a link, about a second).
func Agent(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "mvm-agent")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	cmd := exec.Command(gobin, "build", "-ldflags=-X main.version="+AgentVersion, "-o", bin, agentPackage)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("guesttest: go build %s: %v\n%s", agentPackage, err, out)
	}
	return bin
}

// AgentVersion is the version the agent built by Agent reports.
const AgentVersion = "test"

// Image builds a minimal agent image (package image, BuildRootFS) into a
// temporary directory of t and returns its path. It skips (fails under
// CI=true) when mke2fs or a static busybox is missing.
func Image(t testing.TB) string {
	t.Helper()
	RequireImageTools(t)
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := image.BuildRootFS(ctx, image.RootFSOptions{Agent: Agent(t)}, out); err != nil {
		t.Fatalf("guesttest: build image: %v", err)
	}
	return out
}

// RequireImageTools skips t (fails it under CI=true) unless mke2fs and a
// static busybox are installed.
func RequireImageTools(t testing.TB) {
	t.Helper()
	for _, tool := range []struct{ name, pkg string }{{"mke2fs", "e2fsprogs"}, {"debugfs", "e2fsprogs"}, {"e2fsck", "e2fsprogs"}} {
		if Tool(tool.name) == "" {
			missing(t, "guesttest: %s not found: install %s", tool.name, tool.pkg)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		missing(t, "guesttest: /bin/busybox not found: install busybox-static")
	}
}

// Tool returns the path of an e2fsprogs (or other) program, looking in the
// sbin directories too, or "".
func Tool(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(filepath.Join(d, name)); err == nil {
			return filepath.Join(d, name)
		}
	}
	return ""
}

// Kernel returns the guest kernel: $MVM_KERNEL, or vmlinux-6.1 of the
// shared folder (realfc.Kernel: skipped, or failed under CI=true, when
// missing).
func Kernel(t testing.TB) string {
	t.Helper()
	if k := os.Getenv("MVM_KERNEL"); k != "" {
		return k
	}
	return realfc.Kernel(t)
}

// Firecrackers returns the real firecracker binaries by version ("v1.7.0"):
// $MVM_FIRECRACKER_BIN alone (as "env") when set, else every build of the
// shared folder (realfc.Binaries: skipped, or failed under CI=true, when
// missing).
func Firecrackers(t testing.TB) map[string]string {
	t.Helper()
	if b := os.Getenv("MVM_FIRECRACKER_BIN"); b != "" {
		return map[string]string{"env": b}
	}
	bins := map[string]string{}
	for _, b := range realfc.Binaries(t) {
		bins[b.Name()] = b.Path
	}
	return bins
}

// Versions returns the keys of a Firecrackers map, oldest release first
// ("v1.7.0" before "v1.14.2"; names that are not versions last, by name).
func Versions(bins map[string]string) []string {
	vs := make([]string, 0, len(bins))
	for v := range bins {
		vs = append(vs, v)
	}
	key := func(v string) (ok bool, n [3]int) {
		_, err := fmt.Sscanf(v, "v%d.%d.%d", &n[0], &n[1], &n[2])
		return err == nil, n
	}
	sort.Slice(vs, func(i, j int) bool {
		oi, ni := key(vs[i])
		oj, nj := key(vs[j])
		if oi != oj {
			return oi
		}
		if ni != nj {
			return slices.Compare(ni[:], nj[:]) < 0
		}
		return vs[i] < vs[j]
	})
	return vs
}

// RequireKVM skips t with one line unless /dev/kvm opens read-write and
// can boot an unmodified guest kernel to userspace.
//
// A host whose /dev/kvm is served by kvm-pvm (software nested
// virtualization; these workplace machines have it when they have KVM at
// all) cannot: its instruction emulator stops vmlinux-6.1 early in boot with
// KVM_EXIT_INTERNAL_ERROR (seen at lock cmpxchg16b in SLUB, at xrstor in the
// FPU setup with clearcpuid=cx16, at the alternatives' int3 self-test with
// noxsave as well). There RequireKVM skips, saying so; MVM_KVM_SUITE=on
// runs the suite anyway. Tests that only need a guest to run for a few
// seconds (start, pause, snapshot, restore, crash) use RequireKVMDevice.
//
// MVM_KVM_SUITE=off skips it on every host. .ci/run sets it until the
// suite has passed once on a host with hardware KVM: it has run only on a
// kvm-pvm host, and an unproved suite must not decide whether proved work
// lands. The first session on such a host runs it (MVM_KVM_SUITE unset),
// makes it pass, and removes the line from .ci/run.
func RequireKVM(t testing.TB) {
	t.Helper()
	switch {
	case !realfc.KVM():
		t.Skip("real-KVM test: needs read-write /dev/kvm")
	case os.Getenv("MVM_KVM_SUITE") == "off":
		t.Skip("real-KVM test: MVM_KVM_SUITE=off (see internal/guesttest.RequireKVM)")
	case realfc.PVM() && os.Getenv("MVM_KVM_SUITE") != "on":
		t.Skip("real-KVM test: /dev/kvm is kvm-pvm here, which stops an unmodified guest kernel in early boot (KVM_EXIT_INTERNAL_ERROR); MVM_KVM_SUITE=on runs it anyway")
	}
}

// RequireKVMDevice skips t with one line unless /dev/kvm opens read-write.
// It is for tests that need a real guest to run only for a few seconds,
// which kvm-pvm hosts allow (see RequireKVM). MVM_KVM_SUITE does not apply.
func RequireKVMDevice(t testing.TB) {
	t.Helper()
	if !realfc.KVM() {
		t.Skip("real-KVM test: needs read-write /dev/kvm")
	}
}

// KernelHasConfig reports whether the kernel's configuration (the file
// kernel+".config" beside it) sets every option given (e.g.
// "CONFIG_SERIO_I8042=y"). It returns an error when the file is missing.
func KernelHasConfig(kernel string, opts ...string) (missingOpts []string, err error) {
	b, err := os.ReadFile(kernel + ".config")
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		have[strings.TrimSpace(l)] = true
	}
	for _, o := range opts {
		if !have[o] {
			missingOpts = append(missingOpts, o)
		}
	}
	return missingOpts, nil
}

// ErrTimeout is returned by WaitFor when the condition did not hold in
// time.
var ErrTimeout = errors.New("guesttest: timed out")

// WaitFor polls cond every 20 ms until it returns true or ctx ends.
func WaitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrTimeout, context.Cause(ctx))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
