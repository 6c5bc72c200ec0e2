package firecracker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/conformance"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/mvm-dev/microvm/internal/guesttest"
	"github.com/mvm-dev/microvm/internal/realfc"
)

// jailPair is a firecracker binary and the jailer of the same release.
type jailPair struct {
	name, fc, jailer string
}

// jailPairs returns the real firecracker+jailer pairs of the shared
// folder (v1.0.0 and v1.7.0). Jailed tests need root; without the folder
// they skip (fail under CI=true).
func jailPairs(t *testing.T) []jailPair {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("jailed tests need root (CI=true: they must run)")
		}
		t.Skip("jailed tests need root")
	}
	dir := realfc.Dir(t)
	var out []jailPair
	for _, v := range []string{"v1.0.0", "v1.7.0"} {
		fc, j := filepath.Join(dir, "firecracker-"+v), filepath.Join(dir, "jailer-"+v)
		if _, err := os.Stat(j); err != nil {
			realfc.Missing(t, fmt.Errorf("jailer %s: %w", j, err))
		}
		out = append(out, jailPair{name: v, fc: fc, jailer: j})
	}
	return out
}

// uidRanges hands every jailed runtime of the test binary a uid range and
// a parent cgroup of its own, so that parallel tests never share one.
var uidRanges atomic.Int64

// jailConfig is a JailerConfig for one test runtime: 256 uids of its own
// and a parent cgroup named after the test process and the range, removed
// at the end of the test (it must then be empty).
func jailConfig(t testing.TB, jailer string) *firecracker.JailerConfig {
	n := int(uidRanges.Add(1)) % 256
	base := 1000000 + (os.Getpid()%64)*65536 + n*256
	parent := "mvm-test-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(n)
	t.Cleanup(func() {
		for _, c := range []string{"cpu", "memory", "pids"} {
			dir := filepath.Join("/sys/fs/cgroup", c, parent)
			if ents, err := os.ReadDir(dir); err == nil {
				for _, e := range ents {
					if e.IsDir() {
						t.Errorf("cgroup %s left behind", filepath.Join(dir, e.Name()))
					}
				}
				os.Remove(dir)
			}
		}
	})
	return &firecracker.JailerConfig{Bin: jailer, UIDBase: base, UIDCount: 256, ParentCgroup: parent}
}

// openJailed opens a jailed runtime over state.
func openJailed(t testing.TB, state, fc string, jc *firecracker.JailerConfig, mod ...func(*firecracker.Config)) *firecracker.Runtime {
	t.Helper()
	rt := open(t, state, fc, append([]func(*firecracker.Config){func(c *firecracker.Config) { c.Jailer = jc }}, mod...)...)
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	return rt
}

// jailedHarness is harness with every runtime jailed.
func jailedHarness(t *testing.T, p jailPair, spec microvm.Spec, parallelism int, mod ...func(*firecracker.JailerConfig)) conformance.Harness {
	h := harness(p.fc, spec, parallelism)
	cfgs := map[microvm.Runtime]*firecracker.JailerConfig{}
	states := map[microvm.Runtime]string{}
	h.New = func(t *testing.T) microvm.Runtime {
		state := t.TempDir()
		jc := jailConfig(t, p.jailer)
		for _, m := range mod {
			m(jc)
		}
		rt := openJailed(t, state, p.fc, jc)
		states[rt], cfgs[rt] = state, jc
		t.Cleanup(func() { checkNoJailLeft(t, state) })
		return rt
	}
	h.Reopen = func(t *testing.T, rt microvm.Runtime) microvm.Runtime {
		state, jc := states[rt], cfgs[rt]
		if err := rt.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		nrt := openJailed(t, state, p.fc, jc)
		states[nrt], cfgs[nrt] = state, jc
		return nrt
	}
	return h
}

// checkNoJailLeft fails t if a chroot, a mount or a uid lease of the
// state directory's VMs is left once every VM is gone.
func checkNoJailLeft(t testing.TB, state string) {
	t.Helper()
	vms, _ := os.ReadDir(filepath.Join(state, "registry", "vm"))
	if len(vms) > 0 {
		return // the test left VMs on purpose; their jails are theirs
	}
	jail := filepath.Join(state, "jail")
	filepath.WalkDir(jail, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && filepath.Base(path) == "root" {
			t.Errorf("chroot %s left behind", path)
		}
		return nil
	})
	if uids, _ := os.ReadDir(filepath.Join(state, "registry", "uid")); len(uids) > 0 {
		t.Errorf("%d uid leases left behind", len(uids))
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), " "+jail) {
		t.Errorf("a mount under %s left behind", jail)
	}
}

// TestConformanceJailedStandin runs the conformance suite with the real
// jailer v1.7 and the stand-in (a static binary) as its exec file:
// everything, booted guests, crashes, guest shutdowns, snapshots and
// restores (written in and staged into chroots, the uffd socket in the
// clone's chroot) included. The jailer clears the environment, so the
// stand-in speaks the newest API (the v1.0 dialect runs jailed with the
// real v1.0 binary, TestConformanceJailed) and finds the API
// specification at /shared/reference, made visible in each chroot with
// JailerConfig.ExtraFiles.
func TestConformanceJailedStandin(t *testing.T) {
	p := jailPairs(t)[1]
	bin, extra := jailedStandin(t)
	h := jailedHarness(t, jailPair{name: "standin", fc: bin, jailer: p.jailer}, testSpec(t), 4,
		func(jc *firecracker.JailerConfig) { jc.ExtraFiles, jc.SkipVersionCheck = extra, true })
	conformance.Run(t, h)
}

// jailedStandin returns the stand-in binary and the ExtraFiles that make
// its API specification visible in a chroot (at /shared/reference, where
// it looks when its environment names none).
func jailedStandin(t *testing.T) (string, map[string]string) {
	bin := fcstandin.Build(t)
	specDir := fcstandin.SpecDir(t)
	extra := map[string]string{}
	ents, _ := os.ReadDir(specDir)
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".yaml") {
			extra[filepath.Join(specDir, e.Name())] = filepath.Join("/shared/reference", e.Name())
		}
	}
	return bin, extra
}

// TestJailedRestoreUffd: a jailed clone restored with the uffd backend
// connects to its page server through a socket in its chroot (given to
// its uid) and runs; Destroy ends the page server and leaves no jail.
func TestJailedRestoreUffd(t *testing.T) {
	p := jailPairs(t)[1]
	bin, extra := jailedStandin(t)
	state := t.TempDir()
	jc := jailConfig(t, p.jailer)
	jc.ExtraFiles, jc.SkipVersionCheck = extra, true // the stand-in reports its own version
	rt := openJailed(t, state, bin, jc, func(c *firecracker.Config) { c.UffdBin = uffdBin(t) })
	ctx := context.Background()
	if _, err := rt.Create(ctx, "us", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "us"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, "us", "us-snap", nil); err != nil {
		t.Fatal(err)
	}
	vm, err := rt.Restore(ctx, "ur", "us-snap", &microvm.RestoreOptions{MemoryBackend: microvm.MemoryBackendUffd})
	if err != nil {
		t.Fatalf("Restore with uffd: %v", err)
	}
	if vm.Status != microvm.StatusRunning || vm.Backend.Jail == nil {
		t.Fatalf("restored VM: %s, jail %+v", vm.Status, vm.Backend.Jail)
	}
	// (The load succeeded: the jailed uid connected to the page
	// server's socket, which the server removes once connected.)
	if _, err := rt.Pause(ctx, "ur"); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	destroyAll(t, rt)
	checkNoJailLeft(t, state)
	assertNoJailProcs(t, state)
	if pids := procsUnder(uffdBin(t)); len(pids) > 0 {
		t.Errorf("page servers left: %v", pids)
	}
}

// TestConformanceJailed runs the conformance suite with the real jailer
// and firecracker of v1.0 and v1.7, up to InstanceStart: the kernel is
// not one (see testSpec), so Start fails cleanly with or without KVM.
func TestConformanceJailed(t *testing.T) {
	for _, p := range jailPairs(t) {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			spec := testSpec(t)
			spec.MemoryMiB = 128
			h := jailedHarness(t, p, spec, 4)
			h.NoBoot = true
			conformance.Run(t, h)
		})
	}
}

// jailedVMFacts are what the host says of a jailed VM's process.
type jailedVMFacts struct {
	uid, gid        string
	rootInfo        os.FileInfo // of /proc/PID/root
	seccomp         string      // of the API thread
	nspid           []string
	cgroups         map[string]string // controller -> path
	maxOpenFiles    string
	maxFileSizeSoft string
}

// procFacts reads /proc/<pid>/{status,root,cgroup,limits}.
func procFacts(t *testing.T, pid int) jailedVMFacts {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid)
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		t.Fatalf("read %s/status: %v", dir, err)
	}
	var f jailedVMFacts
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		fields := strings.Fields(v)
		switch k {
		case "Uid":
			f.uid = fields[0]
		case "Gid":
			f.gid = fields[0]
		case "NSpid":
			f.nspid = fields
		}
	}
	if fi, err := os.Stat(dir + "/root/"); err == nil {
		f.rootInfo = fi
	}
	// The API thread filters its system calls from the start (the VMM
	// and vCPU threads from InstanceStart).
	tasks, _ := os.ReadDir(dir + "/task")
	for _, task := range tasks {
		comm, _ := os.ReadFile(dir + "/task/" + task.Name() + "/comm")
		if strings.TrimSpace(string(comm)) != "fc_api" {
			continue
		}
		st, _ := os.ReadFile(dir + "/task/" + task.Name() + "/status")
		for _, line := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(line, "Seccomp:"); ok {
				f.seccomp = strings.TrimSpace(v)
			}
		}
	}
	cg, _ := os.ReadFile(dir + "/cgroup")
	f.cgroups = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			for _, c := range strings.Split(parts[1], ",") {
				f.cgroups[c] = parts[2]
			}
		}
	}
	limits, _ := os.ReadFile(dir + "/limits")
	for _, line := range strings.Split(string(limits), "\n") {
		fields := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "Max open files"):
			f.maxOpenFiles = fields[3]
		case strings.HasPrefix(line, "Max file size"):
			f.maxFileSizeSoft = fields[3]
		}
	}
	return f
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return strings.TrimSpace(string(b))
}

// TestJailedIsolation creates three jailed VMs with each real
// jailer+firecracker pair and checks, in /proc and the cgroup files, that
// each runs as a uid and gid of its own (none shared), in its chroot, in
// a new PID namespace, with seccomp filtering, in its cgroups with the
// spec's limits and with the resource limits; a writable drive is the
// VM's uid's while it runs and its owner's again after Destroy, which
// leaves no chroot, cgroup, uid lease or process.
func TestJailedIsolation(t *testing.T) {
	for _, p := range jailPairs(t) {
		t.Run(p.name, func(t *testing.T) {
			state := t.TempDir()
			jc := jailConfig(t, p.jailer)
			rt := openJailed(t, state, p.fc, jc)
			defer rt.Close()
			ctx := context.Background()
			spec := testSpec(t)
			spec.VCPUs, spec.MemoryMiB = 2, 256
			// VM 0's root drive is its own and writable; the others share
			// one read-only.
			rootfs := filepath.Join(t.TempDir(), "own.ext4")
			if err := os.WriteFile(rootfs, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chown(rootfs, 1234, 5678)
			uids := map[string]string{}
			var vms []microvm.VM
			for i := range 3 {
				s := spec.Clone()
				s.RootDrive.ReadOnly = i > 0
				if i == 0 {
					s.RootDrive.Path = rootfs
				}
				id := fmt.Sprintf("jailed-%d", i)
				vm, err := rt.Create(ctx, id, s)
				if err != nil {
					t.Fatalf("Create(%s): %v", id, err)
				}
				vms = append(vms, vm)
				j := vm.Backend.Jail
				if j == nil || vm.Backend.PID == 0 {
					t.Fatalf("VM %s: Backend %+v has no jail or pid", id, vm.Backend)
				}
				f := procFacts(t, vm.Backend.PID)
				if f.uid != strconv.Itoa(j.UID) || f.gid != strconv.Itoa(j.GID) {
					t.Errorf("VM %s: process runs as uid %s gid %s, Backend says %d/%d", id, f.uid, f.gid, j.UID, j.GID)
				}
				if j.UID < jc.UIDBase || j.UID >= jc.UIDBase+jc.UIDCount {
					t.Errorf("VM %s: uid %d outside the range [%d, %d)", id, j.UID, jc.UIDBase, jc.UIDBase+jc.UIDCount)
				}
				if other, dup := uids[f.uid]; dup {
					t.Errorf("VMs %s and %s share uid %s", other, id, f.uid)
				}
				uids[f.uid] = id
				if fi, err := os.Stat(j.Chroot); err != nil || f.rootInfo == nil || !os.SameFile(fi, f.rootInfo) || !strings.HasPrefix(j.Chroot, state) {
					t.Errorf("VM %s: /proc/PID/root is not the chroot %s under the state dir (%v)", id, j.Chroot, err)
				}
				if f.seccomp != "2" {
					t.Errorf("VM %s: API thread Seccomp: %q, want 2 (filter)", id, f.seccomp)
				}
				if len(f.nspid) != 2 || f.nspid[1] != "1" {
					t.Errorf("VM %s: NSpid %v, want [<pid> 1] (pid 1 of a new PID namespace)", id, f.nspid)
				}
				if f.maxOpenFiles != "2048" {
					t.Errorf("VM %s: open files limit %s, want 2048", id, f.maxOpenFiles)
				}
				if f.maxFileSizeSoft == "unlimited" {
					t.Errorf("VM %s: file size unlimited, want a limit", id)
				}
				want := "/" + jc.ParentCgroup + "/" + id
				for _, c := range []string{"cpu", "memory", "pids"} {
					if f.cgroups[c] != want {
						t.Errorf("VM %s: %s cgroup %q, want %q", id, c, f.cgroups[c], want)
					}
				}
				cg := "/sys/fs/cgroup/%s" + want + "/%s"
				for file, v := range map[string]string{
					fmt.Sprintf(cg, "cpu", "cpu.cfs_quota_us"):         "200000",
					fmt.Sprintf(cg, "cpu", "cpu.cfs_period_us"):        "100000",
					fmt.Sprintf(cg, "memory", "memory.limit_in_bytes"): strconv.Itoa((256 + firecracker.DefaultJailMemoryOverheadMiB) << 20),
					fmt.Sprintf(cg, "pids", "pids.max"):                strconv.Itoa(firecracker.DefaultJailPidsMax),
				} {
					if got := readTrim(t, file); got != v {
						t.Errorf("VM %s: %s = %s, want %s", id, file, got, v)
					}
				}
				if !slicesContains(j.Cgroups, fmt.Sprintf("/sys/fs/cgroup/memory%s", want)) {
					t.Errorf("VM %s: Backend.Jail.Cgroups %v lacks the memory cgroup", id, j.Cgroups)
				}
			}
			var st syscall.Stat_t
			syscall.Stat(rootfs, &st)
			if int(st.Uid) != vms[0].Backend.Jail.UID {
				t.Errorf("writable root drive owned by %d while VM 0 runs, want its uid %d", st.Uid, vms[0].Backend.Jail.UID)
			}
			for _, vm := range vms {
				if _, err := rt.Destroy(ctx, vm.ID); err != nil {
					t.Fatalf("Destroy(%s): %v", vm.ID, err)
				}
				if _, err := os.Stat(vm.Backend.Jail.Chroot); err == nil {
					t.Errorf("chroot %s left after Destroy", vm.Backend.Jail.Chroot)
				}
				for _, c := range vm.Backend.Jail.Cgroups {
					if _, err := os.Stat(c); err == nil {
						t.Errorf("cgroup %s left after Destroy", c)
					}
				}
			}
			syscall.Stat(rootfs, &st)
			if st.Uid != 1234 || st.Gid != 5678 {
				t.Errorf("writable root drive owned by %d:%d after Destroy, want its owner 1234:5678 back", st.Uid, st.Gid)
			}
			checkNoJailLeft(t, state)
			assertNoJailProcs(t, state)
		})
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// assertNoJailProcs fails if a live process has its root, working
// directory or command line under state.
func assertNoJailProcs(t testing.TB, state string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
			if i := strings.LastIndexByte(string(stat), ')'); i < 0 || len(stat) < i+3 || stat[i+2] == 'Z' || stat[i+2] == 'X' {
				continue
			}
			root, _ := os.Readlink("/proc/" + e.Name() + "/root")
			if strings.HasPrefix(root, state) {
				left = append(left, pid)
			}
		}
		left = append(left, procsUnder(state)...)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left under %s: %v", state, left)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestJailedUIDRange: with a range of two uids, a third live VM is
// refused with ErrUIDRangeExhausted and leaves nothing; once one VM is
// destroyed its uid serves the next.
func TestJailedUIDRange(t *testing.T) {
	p := jailPairs(t)[1]
	state := t.TempDir()
	jc := jailConfig(t, p.jailer)
	jc.UIDCount = 2
	rt := openJailed(t, state, p.fc, jc)
	defer rt.Close()
	ctx := context.Background()
	spec := testSpec(t)
	spec.RootDrive.ReadOnly = true
	a, err := rt.Create(ctx, "a", spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := rt.Create(ctx, "b", spec)
	if err != nil {
		t.Fatal(err)
	}
	if a.Backend.Jail.UID == b.Backend.Jail.UID {
		t.Fatalf("two live VMs share uid %d", a.Backend.Jail.UID)
	}
	_, err = rt.Create(ctx, "c", spec)
	if !errors.Is(err, firecracker.ErrUIDRangeExhausted) {
		t.Fatalf("third Create: %v, want ErrUIDRangeExhausted", err)
	}
	if _, err := rt.Get(ctx, "c"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Get(c) after the refused Create: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(state, "vms", "c")); err == nil {
		t.Errorf("vms/c left by the refused Create")
	}
	if _, err := rt.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	c, err := rt.Create(ctx, "c", spec)
	if err != nil {
		t.Fatalf("Create after a Destroy freed a uid: %v", err)
	}
	if c.Backend.Jail.UID != a.Backend.Jail.UID {
		t.Errorf("c got uid %d, want the freed %d", c.Backend.Jail.UID, a.Backend.Jail.UID)
	}
	destroyAll(t, rt)
	checkNoJailLeft(t, state)
}

// TestJailedCrashGC: SIGKILL of a jailed firecracker, seen by the
// runtime watching it and by a runtime opened afterwards (adoption, the
// garbage collection), releases its chroot, cgroups and uid; the VM stays
// (created, with the exit in LastError) and can be started again.
func TestJailedCrashGC(t *testing.T) {
	p := jailPairs(t)[1]
	for _, reopen := range []bool{false, true} {
		t.Run(fmt.Sprintf("reopen=%v", reopen), func(t *testing.T) {
			state := t.TempDir()
			jc := jailConfig(t, p.jailer)
			rt := openJailed(t, state, p.fc, jc)
			ctx := context.Background()
			spec := testSpec(t)
			vm, err := rt.Create(ctx, "crash", spec)
			if err != nil {
				t.Fatal(err)
			}
			if reopen {
				rt.Close()
			}
			if err := syscall.Kill(vm.Backend.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if reopen {
				rt = openJailed(t, state, p.fc, jc)
				if err := rt.AdoptAll(ctx); err != nil {
					t.Fatal(err)
				}
			}
			defer rt.Close()
			deadline := time.Now().Add(5 * time.Second)
			for {
				got, err := rt.Get(ctx, "crash")
				if err != nil {
					t.Fatal(err)
				}
				if got.Backend.PID == 0 {
					if got.Backend.Jail != nil || got.LastError == "" || got.Status != microvm.StatusCreated {
						t.Errorf("after the crash: status %s, jail %+v, last error %q; want created, no jail, the exit", got.Status, got.Backend.Jail, got.LastError)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the crash was not noticed within 5s")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if _, err := os.Stat(vm.Backend.Jail.Chroot); err == nil {
				t.Errorf("chroot %s left after the crash", vm.Backend.Jail.Chroot)
			}
			for _, c := range vm.Backend.Jail.Cgroups {
				if _, err := os.Stat(c); err == nil {
					t.Errorf("cgroup %s left after the crash", c)
				}
			}
			if uids, _ := os.ReadDir(filepath.Join(state, "registry", "uid")); len(uids) != 0 {
				t.Errorf("%d uid leases left after the crash", len(uids))
			}
			assertNoJailProcs(t, state)
			if _, err := rt.Destroy(ctx, "crash"); err != nil {
				t.Fatal(err)
			}
			checkNoJailLeft(t, state)
		})
	}
}

// jailerWrapper returns a jailer that runs script around the real one:
// before says what runs before `exec`-ing it (nothing: exec at once),
// after, when not "", makes the wrapper run the jailer as a child and
// then run after. --version goes straight to the jailer.
func jailerWrapper(t *testing.T, jailer, before, after string) string {
	dir := t.TempDir()
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	fmt.Fprintf(&b, "[ \"$1\" = --version ] && exec %s --version\n", shellQuote(jailer))
	b.WriteString(before + "\n")
	if after == "" {
		fmt.Fprintf(&b, "exec %s \"$@\"\n", shellQuote(jailer))
	} else {
		fmt.Fprintf(&b, "%s \"$@\" || exit $?\n%s\n", shellQuote(jailer), after)
	}
	bin := filepath.Join(dir, "jailer")
	if err := os.WriteFile(bin, []byte(b.String()), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestJailedDriverKilledMidCreate: the process running a jailed Create is
// SIGKILLed (1) after the uid, record and chroot exist but before the
// jailer runs, (2) after the jailer started firecracker (in its cgroup)
// but before the driver recorded its pid. A runtime opened afterwards
// (AdoptAll) leaves nothing: no record, chroot, cgroup, uid lease,
// mount or process.
func TestJailedDriverKilledMidCreate(t *testing.T) {
	p := jailPairs(t)[1]
	for _, tc := range []struct{ name, before, after string }{
		{"before-jailer", "touch \"$MVM_TEST_MARK\"; read -r _ < \"$MVM_TEST_FIFO\"", ""},
		{"firecracker-unrecorded", "", "touch \"$MVM_TEST_MARK\"; read -r _ < \"$MVM_TEST_FIFO\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			mark := filepath.Join(t.TempDir(), "mark")
			// The jailer runs in Config.Env, not the driver's environment:
			// the wrapper gets the paths written in.
			paths := strings.NewReplacer("$MVM_TEST_MARK", mark, "$MVM_TEST_FIFO", filepath.Join(filepath.Dir(mark), "fifo"))
			jc := jailConfig(t, jailerWrapper(t, p.jailer, paths.Replace(tc.before), paths.Replace(tc.after)))
			spec := testSpec(t)
			raw, _ := json.Marshal(childJob{State: state, Bin: p.fc, ID: "victim", Spec: spec, Ops: []string{"create"}, Jailer: jc})
			cmd := execChild(raw)
			// The wrapper blocks in the shell itself (a read of a FIFO
			// nobody opens), with no child of its own.
			fifo := filepath.Join(filepath.Dir(mark), "fifo")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			cmd.Env = append(cmd.Env, "MVM_TEST_MARK="+mark, "MVM_TEST_FIFO="+fifo)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := os.Stat(mark); err == nil {
					break
				}
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					cmd.Wait()
					t.Fatal("the wrapped jailer did not run within 10s")
				}
				time.Sleep(2 * time.Millisecond)
			}
			cmd.Process.Kill()
			cmd.Wait()
			// What the dead driver left: a record naming the jail.
			if _, err := os.Stat(filepath.Join(state, "registry", "vm", "victim.json")); err != nil {
				t.Fatalf("no record while the jailer ran: %v", err)
			}
			if tc.after != "" {
				cgs, _ := filepath.Glob("/sys/fs/cgroup/pids/" + jc.ParentCgroup + "/victim/cgroup.procs")
				if len(cgs) != 1 || readTrim(t, cgs[0]) == "" {
					t.Fatalf("firecracker is not running in its cgroup (%v)", cgs)
				}
			}
			rt := openJailed(t, state, p.fc, jc)
			defer rt.Close()
			if err := rt.AdoptAll(context.Background()); err != nil {
				t.Fatal(err)
			}
			if _, err := rt.Get(context.Background(), "victim"); !errors.Is(err, microvm.ErrNotFound) {
				t.Errorf("Get after recovery: %v, want ErrNotFound", err)
			}
			assertNoJailProcs(t, state)
			checkNoJailLeft(t, state)
			assertClean(t, state, "victim")
		})
	}
}

// TestJailedBindMount: with the chroot base on another file system (a
// tmpfs) than the images, they are bind-mounted (read-only unless
// writable) rather than linked; Destroy unmounts before it removes, and
// the originals are intact.
func TestJailedBindMount(t *testing.T) {
	p := jailPairs(t)[1]
	base := t.TempDir()
	if err := syscall.Mount("tmpfs", base, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(base, syscall.MNT_DETACH) })
	state := t.TempDir()
	jc := jailConfig(t, p.jailer)
	jc.ChrootBase = base
	rt := openJailed(t, state, p.fc, jc)
	defer rt.Close()
	spec := testSpec(t)
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, []byte("user data"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec.Drives = []microvm.Drive{{ID: "data", Path: data, ReadOnly: true}}
	vm, err := rt.Create(context.Background(), "bound", spec)
	if err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, name := range []string{"kernel", "drive-rootfs", "drive-data"} {
		target := filepath.Join(vm.Backend.Jail.Chroot, name)
		var line string
		for _, l := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(l); len(f) > 5 && f[4] == target {
				line = l
			}
		}
		if line == "" {
			t.Errorf("%s is not a mount point", target)
			continue
		}
		ro := strings.HasPrefix(strings.Fields(line)[5], "ro")
		if want := name != "drive-rootfs"; ro != want {
			t.Errorf("%s: read-only %v, want %v (%s)", target, ro, want, line)
		}
	}
	if _, err := rt.Destroy(context.Background(), "bound"); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(data); err != nil || string(got) != "user data" {
		t.Errorf("original drive after Destroy: %q, %v", got, err)
	}
	for _, f := range []string{spec.Kernel, spec.RootDrive.Path} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("original %s after Destroy: %v", f, err)
		}
	}
	mi, _ = os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), base+"/") {
		t.Errorf("mounts under %s left after Destroy", base)
	}
	if ents, _ := os.ReadDir(base); len(ents) > 0 {
		t.Errorf("chroot base not empty after Destroy: %v", ents)
	}
}

// TestJailedBadJailer: a missing jailer, a binary that is not a jailer, a
// jailer of another release than firecracker (v1.0 with v1.7), cgroup
// controllers missing (the cgroup version this host does not have), and
// a jailer that fails before it execs firecracker each give a clear
// error and leave nothing.
func TestJailedBadJailer(t *testing.T) {
	p := jailPairs(t)[1]
	state := t.TempDir()
	for _, tc := range []struct {
		name, bin, want string
	}{
		{"missing", filepath.Join(state, "no-such-jailer"), "does not exist"},
		{"not-a-jailer", p.fc, "did not report a jailer"},
		{"other-release", jailPairs(t)[0].jailer, "use the jailer of the same release"},
	} {
		_, err := firecracker.Open(context.Background(), firecracker.Config{StateDir: state, FirecrackerBin: p.fc,
			Jailer: &firecracker.JailerConfig{Bin: tc.bin}})
		if !errors.Is(err, firecracker.ErrJailer) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Open: %v, want ErrJailer saying %q", tc.name, err, tc.want)
		}
	}
	// A cgroup version whose controllers the host lacks: v2 on a hybrid
	// host (an empty unified hierarchy), v1 on a unified one.
	other, want := 2, "no unified hierarchy"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		other, want = 1, "is not mounted"
	}
	for _, tc := range []struct {
		name, bin, want string
	}{{fmt.Sprintf("cgroup-v%d", other), p.jailer, want}} {
		_, err := firecracker.Open(context.Background(), firecracker.Config{StateDir: state, FirecrackerBin: p.fc,
			Jailer: &firecracker.JailerConfig{Bin: tc.bin, CgroupVersion: other}})
		if !errors.Is(err, firecracker.ErrJailer) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Open: %v, want ErrJailer saying %q", tc.name, err, tc.want)
		}
	}
	jc := jailConfig(t, jailerWrapper(t, p.jailer, "echo jailer refuses >&2; exit 3", ""))
	rt := openJailed(t, state, p.fc, jc)
	defer rt.Close()
	_, err := rt.Create(context.Background(), "refused", testSpec(t))
	// The status in the one-line error, the jailer's output in its detail.
	var oe *microvm.OpError
	if !errors.Is(err, firecracker.ErrJailer) || !strings.Contains(err.Error(), "exited with status 3") ||
		!errors.As(err, &oe) || !strings.Contains(strings.Join(oe.Detail, "\n"), "jailer refuses") {
		t.Errorf("Create with a failing jailer: %v (detail %q), want ErrJailer, its status and its output", err, detailOf(err))
	}
	checkNoJailLeft(t, state)
	assertClean(t, state, "refused")
}

// TestJailedImageInUse: a writable image attached by a live jailed VM is
// refused to a second one (ErrImageInUse naming the first), as in direct
// mode; once the first is destroyed, it can be attached.
func TestJailedImageInUse(t *testing.T) {
	p := jailPairs(t)[1]
	state := t.TempDir()
	rt := openJailed(t, state, p.fc, jailConfig(t, p.jailer))
	defer rt.Close()
	ctx := context.Background()
	spec := testSpec(t)
	if _, err := rt.Create(ctx, "first", spec); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Create(ctx, "second", spec)
	if !errors.Is(err, firecracker.ErrImageInUse) || !strings.Contains(err.Error(), `"first"`) {
		t.Fatalf("second Create of a writable image: %v, want ErrImageInUse naming \"first\"", err)
	}
	if _, err := rt.Destroy(ctx, "first"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Create(ctx, "second", spec); err != nil {
		t.Fatalf("Create after the holder was destroyed: %v", err)
	}
	destroyAll(t, rt)
	checkNoJailLeft(t, state)
}

// TestKVMJailedSnapshotRestore boots the agent image in a jailed
// firecracker v1.7 (real KVM), talks to its agent over vsock (the socket
// lives in the chroot), snapshots it (written in the chroot, moved into
// the store) and restores it twice into jailed clones, with the file and
// the uffd memory backends (the snapshot staged into each clone's chroot,
// the page server's socket in it); each clone's agent answers with the
// counter where the snapshot left it. Destroy leaves no jail behind.
func TestKVMJailedSnapshotRestore(t *testing.T) {
	guesttest.RequireKVM(t)
	p := jailPairs(t)[1]
	ctx := kvmCtx(t)
	state := t.TempDir()
	rt := openJailed(t, state, p.fc, jailConfig(t, p.jailer), func(c *firecracker.Config) { c.UffdBin = uffdBin(t) })
	spec := guestSpec(guesttest.Kernel(t), kvmRootFS(t))
	vm, err := rt.Create(ctx, "src", spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(vm.Backend.VsockPath, vm.Backend.Jail.Chroot+"/") {
		t.Errorf("vsock socket %s is not in the chroot %s", vm.Backend.VsockPath, vm.Backend.Jail.Chroot)
	}
	n, err := guesttest.Counter(ctx, rt, "src")
	if err != nil {
		lines, _ := rt.Logs(context.Background(), "src", 30)
		t.Logf("logs:\n%s", strings.Join(lines, "\n"))
		t.Fatalf("agent of the jailed VM: %v", err)
	}
	if _, err := rt.Snapshot(ctx, "src", "snap", nil); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	for _, backend := range []microvm.MemoryBackend{microvm.MemoryBackendFile, microvm.MemoryBackendUffd} {
		id := "clone-" + string(backend)
		c, err := rt.Restore(ctx, id, "snap", &microvm.RestoreOptions{MemoryBackend: backend})
		if err != nil {
			t.Fatalf("Restore(%s): %v", backend, err)
		}
		if c.Backend.Jail == nil || c.Backend.Jail.UID == vm.Backend.Jail.UID {
			t.Errorf("clone %s: jail %+v, want its own uid", id, c.Backend.Jail)
		}
		got, err := guesttest.Counter(ctx, rt, id)
		if err != nil {
			t.Fatalf("agent of clone %s: %v", id, err)
		}
		if got <= n {
			t.Errorf("clone %s counter %d, want > %d (the source's before the snapshot)", id, got, n)
		}
	}
	destroyAll(t, rt)
	checkNoJailLeft(t, state)
	assertNoJailProcs(t, state)
}

// BenchmarkJailedCreate measures what jailing costs per Create with the
// real firecracker v1.7: Create (spawn and the pre-boot API sequence) and
// Destroy, one VM at a time, direct and through jailer v1.7 (uid lease,
// chroot with hard links, jailer, cgroups; Destroy removes them).
//
//	go test -run '^$' -bench BenchmarkJailedCreate -benchtime 30x ./firecracker/
func BenchmarkJailedCreate(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("jailed mode needs root")
	}
	dir := realfc.Dir(b)
	fc, jailer := filepath.Join(dir, "firecracker-v1.7.0"), filepath.Join(dir, "jailer-v1.7.0")
	for _, jailed := range []bool{false, true} {
		name := "direct"
		if jailed {
			name = "jailed"
		}
		b.Run(name, func(b *testing.B) {
			state := benchStateDir(b)
			var jc *firecracker.JailerConfig
			if jailed {
				jc = jailConfig(b, jailer)
			}
			rt := open(b, state, fc, func(c *firecracker.Config) { c.Jailer = jc })
			defer rt.Close()
			spec := testSpec(b)
			spec.MemoryMiB = 128
			ctx := context.Background()
			var create, destroy time.Duration
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("b%d", i)
				t0 := time.Now()
				if _, err := rt.Create(ctx, id, spec); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := rt.Destroy(ctx, id); err != nil {
					b.Fatal(err)
				}
				create, destroy = create+t1.Sub(t0), destroy+time.Since(t1)
			}
			b.ReportMetric(float64(create.Microseconds())/1000/float64(b.N), "create-ms")
			b.ReportMetric(float64(destroy.Microseconds())/1000/float64(b.N), "destroy-ms")
		})
	}
}

// TestJailedVsockPath: a spec's vsock path is taken inside the chroot
// (the jailed process sees nothing else), its directories are made for
// the VM's uid, and the socket is bound there.
func TestJailedVsockPath(t *testing.T) {
	p := jailPairs(t)[1]
	bin, extra := jailedStandin(t)
	state := t.TempDir()
	jc := jailConfig(t, p.jailer)
	jc.ExtraFiles, jc.SkipVersionCheck = extra, true // the stand-in reports its own version
	rt := openJailed(t, state, bin, jc)
	spec := testSpec(t)
	spec.Vsock = &microvm.Vsock{CID: 3, Path: "/socks/deep/v.sock"}
	vm, err := rt.Create(context.Background(), "vs", spec)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(vm.Backend.Jail.Chroot, "socks/deep/v.sock")
	if vm.Backend.VsockPath != want {
		t.Errorf("VsockPath %s, want %s", vm.Backend.VsockPath, want)
	}
	fi, err := os.Lstat(want)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("vsock socket %s: %v (%v), want a socket", want, err, fi)
	}
	destroyAll(t, rt)
	checkNoJailLeft(t, state)
}

// detailOf is the Detail of err's *microvm.OpError, if any.
func detailOf(err error) []string {
	var oe *microvm.OpError
	if errors.As(err, &oe) {
		return oe.Detail
	}
	return nil
}

// TestKVMJailedGuestSnapshot runs wherever /dev/kvm opens (kvm-pvm hosts
// too: the guest needs to run only for seconds): a real guest under each
// jailer + firecracker pair, started, paused (firecracker's own GET /
// says so through the socket in the chroot), snapshotted (written in the
// chroot, moved into the store), and restored into two jailed clones with
// the file backend, each running by firecracker's account as its own uid;
// a SIGKILLed clone turns failed; Destroy leaves no jail, cgroup or
// process.
func TestKVMJailedGuestSnapshot(t *testing.T) {
	guesttest.RequireKVMDevice(t)
	for _, p := range jailPairs(t) {
		t.Run(p.name, func(t *testing.T) {
			ctx := kvmCtx(t)
			state := t.TempDir()
			rt := openJailed(t, state, p.fc, jailConfig(t, p.jailer), func(c *firecracker.Config) {
				c.APITimeout = 30 * time.Second // see TestKVMGuestSnapshots
			})
			spec := guestSpec(guesttest.Kernel(t), guesttest.Image(t))
			src, err := rt.Create(ctx, "src", spec)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := rt.Start(ctx, "src"); err != nil {
				t.Fatalf("Start: %v", err)
			}
			if s := instanceState(t, rt, "src"); s != "Running" {
				t.Fatalf("firecracker says %q after Start, want Running", s)
			}
			if _, err := rt.Pause(ctx, "src"); err != nil {
				t.Fatalf("Pause: %v", err)
			}
			if s := instanceState(t, rt, "src"); s != "Paused" {
				t.Fatalf("firecracker says %q after Pause, want Paused", s)
			}
			if _, err := rt.Snapshot(ctx, "src", "snap", nil); err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			uids := map[int]string{src.Backend.Jail.UID: "src"}
			for _, id := range []string{"c1", "c2"} {
				c, err := rt.Restore(ctx, id, "snap", &microvm.RestoreOptions{MemoryBackend: microvm.MemoryBackendFile})
				if err != nil {
					t.Fatalf("Restore(%s): %v", id, err)
				}
				if c.Backend.Jail == nil || uids[c.Backend.Jail.UID] != "" {
					t.Fatalf("clone %s: jail %+v, want a uid of its own (taken: %v)", id, c.Backend.Jail, uids)
				}
				uids[c.Backend.Jail.UID] = id
				if !strings.HasPrefix(c.Backend.APISocket, c.Backend.Jail.Chroot+"/") {
					t.Errorf("clone %s: API socket %s outside its chroot %s", id, c.Backend.APISocket, c.Backend.Jail.Chroot)
				}
				if s := instanceState(t, rt, id); s != "Running" {
					t.Errorf("firecracker says %q for clone %s, want Running", s, id)
				}
			}
			kill(t, rt, "c2")
			if vm := waitStatus(t, rt, "c2", microvm.StatusFailed); !strings.Contains(vm.LastError, "SIGKILL") {
				t.Errorf("killed clone: LastError %q", vm.LastError)
			}
			destroyAll(t, rt)
			checkNoJailLeft(t, state)
			assertNoJailProcs(t, state)
		})
	}
}
