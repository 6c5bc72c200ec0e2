package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/mvm-dev/microvm/internal/realfc"
)

var mvmBuild struct {
	once sync.Once
	path string
	out  []byte
	err  error
}

// TestMain removes the binaries the tests built (mvm, mvm-uffd beside it,
// the stand-in firecracker) when they are done.
func TestMain(m *testing.M) {
	code := m.Run()
	if mvmBuild.path != "" {
		os.RemoveAll(filepath.Dir(mvmBuild.path))
	}
	fcstandin.RemoveBuild()
	os.Exit(code)
}

// mvmBinary builds cmd/mvm once per test process.
func mvmBinary(t testing.TB) string {
	t.Helper()
	mvmBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "mvm-cli-test-")
		if err != nil {
			mvmBuild.err = err
			return
		}
		mvmBuild.path = filepath.Join(dir, "mvm")
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		mvmBuild.out, mvmBuild.err = exec.Command(gobin, "build", "-o", mvmBuild.path, ".").CombinedOutput()
	})
	if mvmBuild.err != nil {
		t.Fatalf("go build cmd/mvm: %v\n%s", mvmBuild.err, mvmBuild.out)
	}
	return mvmBuild.path
}

// cli runs mvm as its own process against the stand-in firecracker and a
// per-test state directory.
type cli struct {
	t        *testing.T
	bin, fc  string
	stateDir string
	env      []string
	dir      string // working directory of the mvm processes ("": the test's)
}

func newCLI(t *testing.T) *cli {
	c := &cli{t: t, bin: mvmBinary(t), fc: standinWrapper(t), stateDir: t.TempDir()}
	c.env = append(os.Environ(), "MVM_RUNTIME=", "MVM_STATE_DIR=")
	t.Cleanup(func() {
		// Whatever a failed test left running is killed.
		c.run("rm", "cli-a")
		c.run("rm", "cli-b")
	})
	return c
}

// standinWrapper returns a firecracker binary for mvm: a script that runs
// the stand-in with its settings (firecracker gets none of mvm's
// environment), plus those of <its dir>/extra.env if present (see
// setStandin).
func standinWrapper(t testing.TB) string {
	dir := t.TempDir()
	extra := filepath.Join(dir, "extra.env")
	script := "#!/bin/sh\nexport FCSTANDIN_SPEC_DIR='" + fcstandin.SpecDir(t) + "'\n" +
		"[ -f '" + extra + "' ] && . '" + extra + "'\n" +
		"exec '" + fcstandin.Build(t) + "' \"$@\"\n"
	bin := filepath.Join(dir, "firecracker")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// setStandin sets the stand-in settings of the firecracker processes
// started from now on (none: clears them), e.g. FCSTANDIN_CRASH=GET /.
func (c *cli) setStandin(env ...string) {
	c.t.Helper()
	var b strings.Builder
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		b.WriteString("export " + k + "='" + strings.ReplaceAll(v, "'", `'\''`) + "'\n")
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(c.fc), "extra.env"), []byte(b.String()), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cli) run(args ...string) (code int, stdout, stderr string) {
	c.t.Helper()
	return c.runWith(nil, "", append([]string{"--firecracker-bin", c.fc}, args...)...)
}

// runWith runs mvm --state-dir STATE args, in c.dir, with env added to
// c.env and stdin as its standard input ("": none).
func (c *cli) runWith(env []string, stdin string, args ...string) (code int, stdout, stderr string) {
	c.t.Helper()
	cmd := exec.Command(c.bin, append([]string{"--state-dir", c.stateDir}, args...)...)
	cmd.Env = append(append([]string(nil), c.env...), env...)
	cmd.Dir = c.dir
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errb.String()
	} else if err != nil {
		c.t.Fatalf("run mvm %v: %v", args, err)
	}
	return 0, out.String(), errb.String()
}

// ok runs mvm and fails the test unless it exits 0.
func (c *cli) ok(args ...string) string {
	c.t.Helper()
	code, out, errs := c.run(args...)
	if code != 0 {
		c.t.Fatalf("mvm %s: exit %d: %s%s", strings.Join(args, " "), code, errs, out)
	}
	return out
}

type inspected struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	Backend struct {
		PID       int    `json:"pid"`
		APISocket string `json:"api_socket"`
	} `json:"backend"`
	RestoredFrom string `json:"restored_from"`
}

func (c *cli) inspect(id string) inspected {
	c.t.Helper()
	var vm inspected
	out := c.ok("inspect", id, "-o", "json")
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		c.t.Fatalf("inspect %s: %v\n%s", id, err, out)
	}
	return vm
}

// alive reports whether pid is a live process. A zombie is dead: the VMs'
// processes outlive the mvm that spawned them and are reaped by whatever
// adopted them, maybe late.
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// TestCLILifecycleAcrossProcesses drives one VM through its whole life, and
// a clone restored from its snapshot, with every step a separate mvm
// process: each adopts what the previous one left running.
func TestCLILifecycleAcrossProcesses(t *testing.T) {
	c := newCLI(t)
	kernel, rootfs := images(t)

	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32")
	vm := c.inspect("cli-a")
	if vm.Status != "created" || !alive(vm.Backend.PID) || vm.Backend.APISocket == "" {
		t.Fatalf("after create: %+v (pid alive %v)", vm, alive(vm.Backend.PID))
	}
	pid := vm.Backend.PID
	// A snapshot of a created VM, and a second live VM on its writable
	// root image: operation errors (exit 1) in the user's terms.
	if code, _, errs := c.run("snapshot", "cli-a", "early"); code != 1 ||
		!strings.Contains(errs, `cannot snapshot vm "cli-a": it is created, not running or paused`) {
		t.Fatalf("snapshot of a created VM: exit %d %q", code, errs)
	}
	if code, _, errs := c.run("create", "cli-twin", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32"); code != 1 ||
		!strings.Contains(errs, `vm "cli-a" (root_drive) has it attached writable`) {
		t.Fatalf("create of a second VM on cli-a's writable image: exit %d %q", code, errs)
	}

	c.ok("start", "cli-a")
	if vm = c.inspect("cli-a"); vm.Status != "running" || vm.Backend.PID != pid {
		t.Fatalf("after start: %+v, want running with pid %d", vm, pid)
	}
	c.ok("pause", "cli-a")
	if vm = c.inspect("cli-a"); vm.Status != "paused" {
		t.Fatalf("after pause: %+v", vm)
	}
	// Pausing again is an invalid transition: the operation fails (exit 1).
	if code, _, errs := c.run("pause", "cli-a"); code != 1 || !strings.Contains(errs, `cannot pause vm "cli-a": it is paused, not running`) {
		t.Fatalf("second pause: exit %d %q, want 1 and why", code, errs)
	}
	c.ok("snapshot", "cli-a", "cli-snap")
	if vm = c.inspect("cli-a"); vm.Status != "paused" {
		t.Fatalf("snapshot must leave a paused VM paused: %+v", vm)
	}
	c.ok("resume", "cli-a")
	if out := c.ok("snapshots", "-o", "json"); !strings.Contains(out, `"cli-snap"`) {
		t.Fatalf("snapshots does not list cli-snap:\n%s", out)
	}
	if out := c.ok("logs", "cli-a", "-n", "50"); !strings.Contains(out, "login") && !strings.Contains(out, "Linux") {
		t.Fatalf("logs show no console output:\n%s", out)
	}

	c.ok("stop", "cli-a", "--timeout", "5s")
	if vm = c.inspect("cli-a"); vm.Status != "stopped" || alive(pid) {
		t.Fatalf("after stop: %+v (old pid alive %v)", vm, alive(pid))
	}

	c.ok("restore", "cli-snap", "cli-b")
	clone := c.inspect("cli-b")
	if clone.Status != "running" || clone.RestoredFrom != "cli-snap" || !alive(clone.Backend.PID) {
		t.Fatalf("after restore: %+v", clone)
	}
	out := c.ok("ls", "-o", "json")
	var list []inspected
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 || list[0].ID != "cli-a" || list[1].ID != "cli-b" {
		t.Fatalf("ls: %v %s", err, out)
	}
	// The snapshot is in use by the running clone.
	if code, _, errs := c.run("rm-snapshot", "cli-snap"); code != 1 || !strings.Contains(errs, "in use") {
		t.Fatalf("rm-snapshot while in use: exit %d %q", code, errs)
	}

	c.ok("rm", "cli-b")
	c.ok("rm", "cli-a")
	if alive(clone.Backend.PID) {
		t.Fatalf("clone's firecracker %d still alive after rm", clone.Backend.PID)
	}
	if code, _, errs := c.run("inspect", "cli-a"); code != 1 || !strings.Contains(errs, "not found") {
		t.Fatalf("inspect after rm: exit %d %q", code, errs)
	}
	c.ok("rm-snapshot", "cli-snap")
	if out := c.ok("ls"); strings.Count(out, "\n") != 1 {
		t.Fatalf("ls after rm should show only the header:\n%s", out)
	}
}

// TestCLICrashShowsFailed kills a VM's firecracker between two commands:
// the next command sees it failed and can start it again.
func TestCLICrashShowsFailed(t *testing.T) {
	c := newCLI(t)
	kernel, rootfs := images(t)
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32", "--start")
	vm := c.inspect("cli-a")
	if err := syscall.Kill(vm.Backend.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// kill(2) only queues the signal: on a loaded host the process may
	// still answer for a moment. The next command comes once it is dead.
	for deadline := time.Now().Add(5 * time.Second); alive(vm.Backend.PID) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if vm = c.inspect("cli-a"); vm.Status != "failed" {
		t.Fatalf("after SIGKILL: status %q, want failed", vm.Status)
	}
	out := c.ok("ls")
	if !strings.Contains(out, "failed") {
		t.Fatalf("ls does not show the failure:\n%s", out)
	}
	c.ok("start", "cli-a")
	if vm = c.inspect("cli-a"); vm.Status != "running" || !alive(vm.Backend.PID) {
		t.Fatalf("restart after failure: %+v", vm)
	}
	c.ok("rm", "cli-a")
}

// TestCLIRealBinaries runs the CLI, each command its own process, against
// each real Firecracker build, from a directory holding the images named
// by relative paths: create, inspect, ls, logs, start (which fails cleanly
// without KVM), crash detection and rm.
func TestCLIRealBinaries(t *testing.T) {
	bins := realfc.Binaries(t)
	kernel := realfc.Kernel(t)
	for _, b := range bins {
		t.Run(b.Name(), func(t *testing.T) {
			t.Parallel()
			c := newCLI(t)
			c.fc, c.dir = b.Path, t.TempDir()
			if err := os.Symlink(kernel, filepath.Join(c.dir, "vmlinux")); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"rootfs.ext4", "rootfs-b.ext4", "data.img"} {
				if err := os.WriteFile(filepath.Join(c.dir, f), make([]byte, 1<<20), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			c.ok("create", "cli-a", "--kernel", "vmlinux", "--rootfs", "./rootfs.ext4", "--drive", "data.img:ro",
				"--vcpus", "2", "--memory", "128")
			var vm struct {
				inspected
				Spec struct {
					Kernel    string `json:"kernel"`
					RootDrive struct {
						Path string `json:"path"`
					} `json:"root_drive"`
					Drives []struct {
						Path     string `json:"path"`
						ReadOnly bool   `json:"read_only"`
					} `json:"drives"`
				} `json:"spec"`
				LastError string `json:"last_error"`
			}
			inspect := func() {
				t.Helper()
				out := c.ok("inspect", "cli-a", "-o", "json")
				if err := json.Unmarshal([]byte(out), &vm); err != nil {
					t.Fatalf("inspect: %v\n%s", err, out)
				}
			}
			inspect()
			if vm.Status != "created" || !alive(vm.Backend.PID) {
				t.Fatalf("after create: %+v (pid alive %v)", vm.inspected, alive(vm.Backend.PID))
			}
			if vm.Spec.Kernel != filepath.Join(c.dir, "vmlinux") || vm.Spec.RootDrive.Path != filepath.Join(c.dir, "rootfs.ext4") ||
				len(vm.Spec.Drives) != 1 || vm.Spec.Drives[0].Path != filepath.Join(c.dir, "data.img") || !vm.Spec.Drives[0].ReadOnly {
				t.Errorf("stored spec paths are not the absolute ones: %+v", vm.Spec)
			}
			if out := c.ok("ls"); !strings.Contains(out, "cli-a") || !strings.Contains(out, "created") {
				t.Errorf("ls:\n%s", out)
			}
			// Firecracker logs to its stdout (console.log) at its default
			// level: Info from v1.7, with its start line; Warning before.
			if out := c.ok("logs", "cli-a", "-n", "500"); !strings.HasPrefix(b.Version, "1.0.") && !strings.Contains(out, "Running Firecracker v"+b.Version) {
				t.Errorf("logs lack firecracker's start line:\n%s", out)
			}
			if !realfc.KVM() {
				code, _, errs := c.run("start", "cli-a")
				if code != 1 || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.Contains(errs, "boot") {
					t.Errorf("start without KVM: exit %d, stderr %q; want 1 and one line naming the boot", code, errs)
				}
				inspect()
				if vm.Status != "created" || vm.LastError == "" {
					t.Errorf("after a failed start: %s, last error %q", vm.Status, vm.LastError)
				}
			}
			// Crash: a fresh VM's firecracker killed between two commands.
			// cli-a holds rootfs.ext4 writable: cli-b has its own image.
			c.ok("create", "cli-b", "--kernel", "vmlinux", "--rootfs", "rootfs-b.ext4", "--memory", "128")
			crashed := c.inspect("cli-b")
			if err := syscall.Kill(crashed.Backend.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			if got := c.inspect("cli-b"); got.Status != "created" || got.Backend.PID != 0 {
				t.Errorf("after SIGKILL of a created VM: %+v, want created without a process", got)
			}
			c.ok("rm", "cli-b")
			pid := vm.Backend.PID
			c.ok("rm", "cli-a")
			if alive(pid) || alive(crashed.Backend.PID) {
				t.Errorf("firecracker processes alive after rm: %d %v, %d %v", pid, alive(pid), crashed.Backend.PID, alive(crashed.Backend.PID))
			}
			if code, _, errs := c.run("inspect", "cli-a"); code != 1 || !strings.Contains(errs, "not found") {
				t.Errorf("inspect after rm: exit %d %q", code, errs)
			}
			if ents, _ := os.ReadDir(filepath.Join(c.stateDir, "vms")); len(ents) != 0 {
				t.Errorf("vms/ not empty after rm: %v", ents)
			}
		})
	}
}

// TestCLIJailed runs the CLI with --jailer-bin and the real jailer and
// firecracker v1.7 (root only): each VM runs as its own uid in its chroot
// and records its jailer (inspect shows the three; the images given by a
// relative symbolic link and path), a SIGKILLed VM is found without its
// jail, and rm leaves no chroot, cgroup or process.
func TestCLIJailed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("jailed mode needs root")
	}
	dir := realfc.Dir(t)
	c := newCLI(t)
	c.fc, c.dir = filepath.Join(dir, "firecracker-v1.7.0"), t.TempDir()
	c.env = append(c.env, "MVM_JAILER_BIN="+filepath.Join(dir, "jailer-v1.7.0"), "MVM_JAILER_UID_RANGE=810000:8")
	if err := os.Symlink(realfc.Kernel(t), filepath.Join(c.dir, "vmlinux")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rootfs.ext4", "rootfs-b.ext4"} {
		if err := os.WriteFile(filepath.Join(c.dir, f), make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	type jailed struct {
		inspected
		LastError string `json:"last_error"`
		Backend   struct {
			PID    int    `json:"pid"`
			Jailer string `json:"jailer"`
			Jail   *struct {
				UID     int      `json:"uid"`
				Chroot  string   `json:"chroot"`
				Cgroups []string `json:"cgroups"`
			} `json:"jail"`
		} `json:"backend"`
	}
	inspect := func(id string) jailed {
		t.Helper()
		var vm jailed
		out := c.ok("inspect", id, "-o", "json")
		if err := json.Unmarshal([]byte(out), &vm); err != nil {
			t.Fatalf("inspect: %v\n%s", err, out)
		}
		return vm
	}
	var vms []jailed
	for i, id := range []string{"cli-a", "cli-b"} {
		c.ok("create", id, "--kernel", "vmlinux", "--rootfs", []string{"rootfs.ext4", "rootfs-b.ext4"}[i], "--memory", "128")
		vm := inspect(id)
		j := vm.Backend.Jail
		if j == nil || j.UID < 810000 || j.UID >= 810008 || j.Chroot == "" || len(j.Cgroups) == 0 {
			t.Fatalf("inspect %s: jail %+v, want a uid in 810000:8, a chroot and cgroups", id, j)
		}
		if want := filepath.Join(dir, "jailer-v1.7.0"); vm.Backend.Jailer != want {
			t.Errorf("inspect %s: backend.jailer %q, want the jailer it was created with, %q", id, vm.Backend.Jailer, want)
		}
		status, _ := os.ReadFile("/proc/" + strconv.Itoa(vm.Backend.PID) + "/status")
		if !strings.Contains(string(status), "\nUid:\t"+strconv.Itoa(j.UID)+"\t") {
			t.Errorf("%s: process %d does not run as uid %d", id, vm.Backend.PID, j.UID)
		}
		vms = append(vms, vm)
	}
	if vms[0].Backend.Jail.UID == vms[1].Backend.Jail.UID {
		t.Errorf("two live VMs share uid %d", vms[0].Backend.Jail.UID)
	}
	if err := syscall.Kill(vms[1].Backend.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if got := inspect("cli-b"); got.Status != "created" || got.Backend.PID != 0 || got.Backend.Jail != nil || got.LastError == "" {
		t.Errorf("after SIGKILL: %s, pid %d, jail %+v, last error %q; want created without process or jail", got.Status, got.Backend.PID, got.Backend.Jail, got.LastError)
	}
	for _, vm := range vms {
		c.ok("rm", vm.ID)
		if _, err := os.Stat(vm.Backend.Jail.Chroot); err == nil {
			t.Errorf("chroot %s left after rm", vm.Backend.Jail.Chroot)
		}
		for _, cg := range vm.Backend.Jail.Cgroups {
			if _, err := os.Stat(cg); err == nil {
				t.Errorf("cgroup %s left after rm", cg)
			}
			os.Remove(filepath.Dir(cg)) // the parent, once empty
		}
		if alive(vm.Backend.PID) {
			t.Errorf("process %d alive after rm", vm.Backend.PID)
		}
	}
}

// TestCLIStopAndRmSeveral: stop and rm take several names; each is tried
// even when another fails, the failures are one line on stderr and the
// status is 1, and an invalid name refuses the whole command line (status
// 2) before any VM is touched.
func TestCLIStopAndRmSeveral(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("image"), 0o600); err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, id := range []string{"cli-a", "cli-b"} {
		rootfs := filepath.Join(dir, id+".ext4")
		if err := os.WriteFile(rootfs, []byte("image"), 0o600); err != nil {
			t.Fatal(err)
		}
		c.ok("create", id, "--kernel", kernel, "--rootfs", rootfs, "--memory", "32", "--start")
		pids[id] = c.inspect(id).Backend.PID
	}

	// An invalid name among valid ones: nothing is stopped.
	if code, _, errs := c.run("stop", "cli-a", "bad/name", "cli-b"); code != 2 ||
		!strings.Contains(errs, `mvm: stop: invalid id "bad/name"`) {
		t.Fatalf("stop with an invalid name: exit %d %q", code, errs)
	}
	for id := range pids {
		if st := c.inspect(id).Status; st != "running" {
			t.Fatalf("%s is %s after a refused stop", id, st)
		}
	}

	// Several names, one unknown: the others are stopped all the same.
	code, out, errs := c.run("stop", "--timeout", "0s", "cli-a", "cli-nosuch", "cli-b")
	if code != 1 || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, `"cli-nosuch"`) || !strings.Contains(errs, "not found") {
		t.Fatalf("stop cli-a cli-nosuch cli-b: exit %d stderr %q", code, errs)
	}
	if !strings.Contains(out, "cli-a") || !strings.Contains(out, "cli-b") || strings.Contains(out, "cli-nosuch") {
		t.Fatalf("stop printed %q, want the two stopped VMs", out)
	}
	for id := range pids {
		if st := c.inspect(id).Status; st != "stopped" {
			t.Fatalf("%s is %s after stop", id, st)
		}
	}

	// rm of two, then of two that are gone: both errors on one line.
	c.ok("start", "cli-b")
	pids["cli-b"] = c.inspect("cli-b").Backend.PID
	var vms []inspected
	if err := json.Unmarshal([]byte(c.ok("-o", "json", "rm", "cli-a", "cli-b")), &vms); err != nil || len(vms) != 2 ||
		vms[0].ID != "cli-a" || vms[1].ID != "cli-b" {
		t.Fatalf("rm cli-a cli-b -o json: %v %+v", err, vms)
	}
	for id, pid := range pids {
		if alive(pid) {
			t.Errorf("%s: firecracker %d still alive after rm", id, pid)
		}
	}
	if out := c.ok("ls"); strings.Contains(out, "cli-a") || strings.Contains(out, "cli-b") {
		t.Fatalf("ls after rm:\n%s", out)
	}
	code, out, errs = c.run("rm", "cli-a", "cli-b")
	if code != 1 || out != "" || strings.Count(errs, "\n") != 1 ||
		!strings.Contains(errs, `"cli-a": vm not found; `) || !strings.Contains(errs, `"cli-b": vm not found`) {
		t.Fatalf("rm of two removed VMs: exit %d stdout %q stderr %q", code, out, errs)
	}
}

// TestCLIMessagesInUserTerms: operation errors that the libraries word in
// their own terms reach stderr in the command line's: --track-dirty-pages
// (not spec.track_dirty_pages), --force (not force), "firecracker API"
// (not fcapi:).
func TestCLIMessagesInUserTerms(t *testing.T) {
	c := newCLI(t)
	kernel, rootfs := images(t)
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--rootfs-ro", "--memory", "32", "--start")
	code, _, errs := c.run("snapshot", "cli-a", "cli-s1", "--diff")
	if code != 1 || !strings.Contains(errs, `snapshot vm "cli-a": a diff snapshot needs a VM created with --track-dirty-pages`) ||
		strings.Contains(errs, "spec.") {
		t.Errorf("diff snapshot without --track-dirty-pages: exit %d %q", code, errs)
	}
	c.ok("snapshot", "cli-a", "cli-s1")
	c.ok("restore", "cli-s1", "cli-b")
	code, _, errs = c.run("rm-snapshot", "cli-s1")
	if code != 1 || !strings.Contains(errs, "cli-b") || !strings.Contains(errs, "or use --force)") || strings.Contains(errs, "or force") {
		t.Errorf("rm-snapshot of a snapshot in use: exit %d %q", code, errs)
	}
	c.ok("rm", "cli-a", "cli-b")
	c.ok("rm-snapshot", "cli-s1")

	c.setStandin("FCSTANDIN_CRASH=PUT /actions")
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32")
	code, _, errs = c.run("start", "cli-a")
	if code != 1 || !strings.Contains(errs, "firecracker API PUT /actions") || strings.Contains(errs, "fcapi") {
		t.Errorf("failed start: exit %d %q", code, errs)
	}
}
