// Package realfc finds the real Firecracker builds the tests run against
// (../shared/firecracker beside the repository: firecracker-v1.0.0,
// firecracker-v1.7.0, firecracker-v1.14.2 and the guest kernel
// vmlinux-6.1), so that every suite which spawns firecracker can run on each
// real binary as well as on the stand-in (internal/fcstandin).
//
// The folder is MVM_SHARED_DIR/firecracker when MVM_SHARED_DIR is set, else
// the first shared/firecracker found walking up from the working directory.
// When it is missing, [Binaries] skips the test with one line, or fails it
// when CI=true: CI must run the real-binary suites.
//
// Without /dev/kvm a real firecracker serves its whole API up to
// InstanceStart, which fails (v1.0 aborts with SIGABRT); [KVM] tells tests
// which side of that line the machine is on.
package realfc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// EnvSharedDir names the folder holding firecracker/ (and reference/); it
// overrides the search above the working directory.
const EnvSharedDir = "MVM_SHARED_DIR"

// binPrefix starts the name of every firecracker build in the folder.
const binPrefix = "firecracker-v"

// ErrNotFound means the folder of real binaries, or a file in it, is missing.
var ErrNotFound = errors.New("realfc: real firecracker binaries not found")

// Binary is one real firecracker build.
type Binary struct {
	// Version is the release it was built from, e.g. "1.7.0".
	Version string
	// Path is the absolute path of the executable.
	Path string
	// major, minor, patch order the builds.
	v [3]int
}

// Name is "v" + Version, for subtest names.
func (b Binary) Name() string { return "v" + b.Version }

// AtLeast reports whether b is release major.minor or newer.
func (b Binary) AtLeast(major, minor int) bool {
	return b.v[0] > major || b.v[0] == major && b.v[1] >= minor
}

// Find returns the shared firecracker folder and the builds in it, oldest
// first. getenv and start (the directory to search upwards from) are
// parameters so that it can be tested.
func Find(getenv func(string) string, start string) (dir string, bins []Binary, err error) {
	if d := getenv(EnvSharedDir); d != "" {
		dir = filepath.Join(d, "firecracker")
	} else {
		d, err := filepath.Abs(start)
		if err != nil {
			return "", nil, fmt.Errorf("%w: %v", ErrNotFound, err)
		}
		for {
			cand := filepath.Join(d, "shared", "firecracker")
			if st, err := os.Stat(cand); err == nil && st.IsDir() {
				dir = cand
				break
			}
			parent := filepath.Dir(d)
			if parent == d {
				return "", nil, fmt.Errorf("%w: no shared/firecracker above %s; set %s to the shared folder", ErrNotFound, start, EnvSharedDir)
			}
			d = parent
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v (set %s to the shared folder)", ErrNotFound, err, EnvSharedDir)
	}
	for _, e := range ents {
		ver, ok := strings.CutPrefix(e.Name(), binPrefix)
		if !ok {
			continue
		}
		b := Binary{Version: ver, Path: filepath.Join(dir, e.Name())}
		parts := strings.SplitN(ver, ".", 3)
		if len(parts) != 3 {
			continue
		}
		good := true
		for i, p := range parts {
			n, err := strconv.Atoi(p)
			good = good && err == nil
			b.v[i] = n
		}
		if st, err := os.Stat(b.Path); !good || err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			continue
		}
		bins = append(bins, b)
	}
	if len(bins) == 0 {
		return "", nil, fmt.Errorf("%w: no executable %s* in %s", ErrNotFound, binPrefix, dir)
	}
	slices.SortFunc(bins, func(a, b Binary) int {
		for i := range a.v {
			if a.v[i] != b.v[i] {
				return a.v[i] - b.v[i]
			}
		}
		return 0
	})
	return dir, bins, nil
}

// Missing skips t with one line saying what is missing (err), or fails it
// when CI=true: what the shared folder provides must be there in CI.
func Missing(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%v (CI=true: the tests that need it must run)", err)
	}
	t.Skipf("%v", err)
}

// Dir returns the shared firecracker folder (see the package
// documentation). When it is missing it skips t, or fails it when CI=true.
func Dir(t testing.TB) string {
	t.Helper()
	dir, _ := find(t)
	return dir
}

// find is Find from the working directory, skipping t (failing it under
// CI=true) when nothing is found.
func find(t testing.TB) (string, []Binary) {
	t.Helper()
	wd, _ := os.Getwd()
	dir, bins, err := Find(os.Getenv, wd)
	if err != nil {
		Missing(t, err)
	}
	return dir, bins
}

// Binaries returns every real firecracker build, oldest first. When there
// is none it skips t, or fails it when CI=true.
func Binaries(t testing.TB) []Binary {
	t.Helper()
	_, bins := find(t)
	return bins
}

// Ends returns the oldest and the newest build (one build when there is
// only one): the ones long suites run on.
func Ends(t testing.TB) []Binary {
	t.Helper()
	bins := Binaries(t)
	if len(bins) == 1 {
		return bins
	}
	return []Binary{bins[0], bins[len(bins)-1]}
}

// Kernel returns the path of the guest kernel beside the binaries
// (vmlinux-6.1). When it is missing it skips t, or fails it when CI=true.
func Kernel(t testing.TB) string {
	t.Helper()
	k := filepath.Join(Dir(t), "vmlinux-6.1")
	if st, err := os.Stat(k); err != nil || !st.Mode().IsRegular() {
		Missing(t, fmt.Errorf("%w: guest kernel %s", ErrNotFound, k))
	}
	return k
}

// KVM reports whether /dev/kvm opens read-write here: whether a real
// firecracker can boot a guest.
func KVM() bool {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// PVM reports whether /dev/kvm is served by kvm-pvm, the
// pagetable-based software virtualization that lets a guest of a
// hypervisor without nested virtualization run KVM: it runs an unmodified
// guest kernel only until its instruction emulator meets an instruction it
// cannot handle (see guesttest.RequireKVM).
func PVM() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}

// TAPOpenBy reports whether process pid holds a TUN/TAP file attached to
// the interface name: what firecracker does when it accepts a network
// interface (its fdinfo of /dev/net/tun shows "iff:\tNAME").
func TAPOpenBy(pid int, name string) bool {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "iff:" && f[1] == name {
				return true
			}
		}
	}
	return false
}
