package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bare runs mvm with no flag but --state-dir (and extra environment).
func (c *cli) bare(env []string, args ...string) (code int, stdout, stderr string) {
	c.t.Helper()
	return c.runWith(env, "", args...)
}

func (c *cli) bareOK(args ...string) string {
	c.t.Helper()
	code, out, errs := c.bare(nil, args...)
	if code != 0 {
		c.t.Fatalf("mvm %s: exit %d: %s%s", strings.Join(args, " "), code, errs, out)
	}
	return out
}

func images(t *testing.T) (kernel, rootfs string) {
	dir := t.TempDir()
	kernel, rootfs = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	for _, f := range []string{kernel, rootfs} {
		if err := os.WriteFile(f, []byte("image"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, rootfs
}

// TestCLIRemembersSettings: the first command that names the firecracker
// binary saves it in the state directory; every later command works with
// no flag but --state-dir; a command naming another binary (by flag or by
// variable) is refused with how to change it; `mvm config set` changes it
// for new VMs while each VM keeps the binary it was created with; the
// network settings are remembered and refused the same way.
func TestCLIRemembersSettings(t *testing.T) {
	c := newCLI(t)
	kernel, rootfs := images(t)
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32") // with --firecracker-bin

	for _, args := range [][]string{{"inspect", "cli-a"}, {"start", "cli-a"}, {"ls"}, {"logs", "cli-a"}, {"stop", "cli-a"}} {
		c.bareOK(args...)
	}
	var shown map[string]string
	if err := json.Unmarshal([]byte(c.bareOK("config", "-o", "json")), &shown); err != nil || shown["firecracker-bin"] != c.fc {
		t.Fatalf("mvm config: %v %v, want firecracker-bin %s", shown, err, c.fc)
	}
	if out := c.bareOK("config"); !strings.Contains(out, "firecracker-bin") || !strings.Contains(out, c.fc) || !strings.Contains(out, "saved") {
		t.Fatalf("mvm config table:\n%s", out)
	}

	// Another binary: a wrapper around the stand-in at another path.
	other := filepath.Join(t.TempDir(), "firecracker-other")
	if err := os.WriteFile(other, []byte("#!/bin/sh\nexec "+c.fc+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, how := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"--firecracker-bin", other, "ls"}, "--firecracker-bin"},
		{[]string{"MVM_FIRECRACKER_BIN=" + other}, []string{"ls"}, "MVM_FIRECRACKER_BIN"},
	} {
		code, _, errs := c.bare(how.env, how.args...)
		if code != 2 || !strings.Contains(errs, how.want) || !strings.Contains(errs, "mvm config set firecracker-bin "+other) ||
			strings.Count(strings.TrimSpace(errs), "\n") != 0 {
			t.Errorf("contradicting %s: exit %d %q, want 2 and how to change it, on one line", how.want, code, errs)
		}
	}
	c.bareOK("config", "set", "firecracker-bin", other)
	if err := os.WriteFile(rootfs+"2", []byte("image"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.bareOK("create", "cli-b", "--kernel", kernel, "--rootfs", rootfs+"2", "--memory", "32")
	binOf := func(id string) string {
		var vm struct {
			Backend struct{ Binary string } `json:"backend"`
		}
		if err := json.Unmarshal([]byte(c.bareOK("inspect", id, "-o", "json")), &vm); err != nil {
			t.Fatal(err)
		}
		return vm.Backend.Binary
	}
	if a, b := binOf("cli-a"), binOf("cli-b"); a != c.fc || b != other {
		t.Errorf("binaries: cli-a %q cli-b %q, want %q and %q", a, b, c.fc, other)
	}
	c.bareOK("start", "cli-a") // a fresh process of its own binary
	if a := binOf("cli-a"); a != c.fc {
		t.Errorf("cli-a restarted with %q, want %q", a, c.fc)
	}

	// Network settings: saved by config set (no VM has a network), refused
	// when contradicted, forgotten with ''.
	c.bareOK("config", "set", "net-pool", "10.77.0.1/16")
	if code, _, errs := c.bare(nil, "--net-pool", "10.78.0.0/16", "ls"); code != 2 || !strings.Contains(errs, "mvm config set net-pool 10.78.0.0/16") {
		t.Errorf("contradicting --net-pool: exit %d %q", code, errs)
	}
	c.bare(nil, "--net-pool", "10.77.0.0/16", "ls") // the same range: accepted
	if code, _, errs := c.bare(nil, "--net-pool", "10.77.0.0/16", "ls"); code != 0 {
		t.Errorf("--net-pool equal to the saved one: exit %d %q", code, errs)
	}
	if code, _, errs := c.bare(nil, "config", "set", "net-pool", "nonsense"); code != 2 || !strings.Contains(errs, "IPv4 range") {
		t.Errorf("config set net-pool nonsense: exit %d %q", code, errs)
	}
	// Jailer settings are remembered like the others.
	c.bareOK("config", "set", "jailer-uid-range", "700000:16")
	if code, _, errs := c.bare(nil, "--jailer-uid-range", "800000:16", "ls"); code != 2 || !strings.Contains(errs, "mvm config set jailer-uid-range 800000:16") {
		t.Errorf("contradicting --jailer-uid-range: exit %d %q", code, errs)
	}
	if code, _, errs := c.bare(nil, "config", "set", "jailer-uid-range", "0:x"); code != 2 || !strings.Contains(errs, "FIRST:COUNT") {
		t.Errorf("config set jailer-uid-range 0:x: exit %d %q", code, errs)
	}
	if out := c.bareOK("config", "-o", "json"); !strings.Contains(out, "700000:16") {
		t.Errorf("jailer-uid-range not shown: %s", out)
	}
	c.bareOK("ls") // a saved range without a jailer waits for one
	c.bareOK("config", "set", "jailer-uid-range", "")
	if code, _, errs := c.bare(nil, "config", "set", "no-such-key", "x"); code != 2 || !strings.Contains(errs, "firecracker-bin, jailer-bin, jailer-uid-range, egress-iface") {
		t.Errorf("config set of an unknown key: exit %d %q", code, errs)
	}
	c.bareOK("config", "set", "net-pool", "")
	if out := c.bareOK("config", "-o", "json"); strings.Contains(out, "net-pool") {
		t.Errorf("net-pool not forgotten: %s", out)
	}
	c.bareOK("rm", "cli-b")
	c.bareOK("rm", "cli-a")

	// A new state directory with no binary saved and none in PATH says how
	// to name one.
	code, _, errs := c.bare([]string{"PATH=/nonexistent"}, "--state-dir", t.TempDir(), "ls")
	if code == 0 || !strings.Contains(errs, "mvm config set firecracker-bin PATH") || strings.Count(errs, "\n") != 1 {
		t.Errorf("ls without a firecracker binary: exit %d %q", code, errs)
	}
}

// TestCLIErrorsOneLine: a failed create or start is one line on stderr,
// under 300 characters, without firecracker's output; --verbose adds that
// output after it, and inspect shows it (last_error_detail) for a VM that
// still exists, while last_error stays one short line.
func TestCLIErrorsOneLine(t *testing.T) {
	c := newCLI(t)
	kernel, rootfs := images(t)
	c.setStandin("FCSTANDIN_CRASH=PUT /drives/rootfs")
	create := []string{"--firecracker-bin", c.fc, "create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32"}
	code, _, errs := c.bare(nil, create...)
	line := strings.TrimSuffix(errs, "\n")
	if code != 1 || strings.Contains(line, "\n") || len(line) >= 300 || !strings.Contains(line, `create vm "cli-a"`) ||
		!strings.Contains(line, "SIGABRT") || strings.Contains(line, "panicked") {
		t.Fatalf("failed create: exit %d, stderr (%d bytes) %q: want one line under 300 bytes naming the VM and the signal, without firecracker's output", code, len(line), errs)
	}
	code, _, errs = c.bare(nil, append([]string{"-v"}, create...)...)
	if lines := strings.Split(strings.TrimSpace(errs), "\n"); code != 1 || len(lines) < 2 || !strings.Contains(errs, "panicked") {
		t.Fatalf("failed create with -v: exit %d %q: want firecracker's output after the error", code, errs)
	}

	c.setStandin("FCSTANDIN_CRASH=PUT /actions")
	if code, _, errs := c.bare(nil, create[2:]...); code != 0 {
		t.Fatalf("create: %s", errs)
	}
	code, _, errs = c.bare(nil, "start", "cli-a")
	line = strings.TrimSuffix(errs, "\n")
	if code != 1 || strings.Contains(line, "\n") || len(line) >= 300 || !strings.Contains(line, `start vm "cli-a"`) {
		t.Fatalf("failed start: exit %d, stderr (%d bytes) %q", code, len(line), errs)
	}
	var vm struct {
		LastError       string   `json:"last_error"`
		LastErrorDetail []string `json:"last_error_detail"`
	}
	if err := json.Unmarshal([]byte(c.bareOK("inspect", "cli-a")), &vm); err != nil {
		t.Fatal(err)
	}
	if len(vm.LastError) >= 300 || strings.Contains(vm.LastError, "\n") || len(vm.LastErrorDetail) == 0 ||
		strings.Contains(vm.LastError, vm.LastErrorDetail[len(vm.LastErrorDetail)-1]) {
		t.Errorf("inspect after a failed start: last_error (%d bytes) %q, last_error_detail %q", len(vm.LastError), vm.LastError, vm.LastErrorDetail)
	}
	t.Logf("create: %s", line)
	t.Logf("last_error: %s", vm.LastError)
	c.bareOK("rm", "cli-a")
}

// TestCLIRename: mvm rename moves a created VM, with its process, to a new
// name; the old name is gone; a running VM is refused (exit 1).
func TestCLIRename(t *testing.T) {
	c := newCLI(t)
	kernel, rootfs := images(t)
	c.ok("create", "cli-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32")
	pid := c.inspect("cli-a").Backend.PID
	c.ok("rename", "cli-a", "cli-b")
	if vm := c.inspect("cli-b"); vm.Backend.PID != pid || vm.Status != "created" {
		t.Fatalf("after rename: %+v, want pid %d", vm, pid)
	}
	if code, _, errs := c.run("inspect", "cli-a"); code != 1 || !strings.Contains(errs, "not found") {
		t.Errorf("inspect of the old name: exit %d %q", code, errs)
	}
	c.ok("start", "cli-b")
	if code, _, errs := c.run("rename", "cli-b", "cli-a"); code != 1 || !strings.Contains(errs, "it is running, not created, stopped or paused") {
		t.Errorf("rename of a running VM: exit %d %q", code, errs)
	}
	if code, _, errs := c.run("rename", "cli-b"); code != 2 {
		t.Errorf("rename with one argument: exit %d %q", code, errs)
	}
}

// TestCLIInterrupts: a first ^C cancels the command, which ends with its
// error once it can; a second ^C ends it at once (status 130), even while
// it waits where a cancelled context cannot reach (here: the settings
// file's lock, held by the test).
func TestCLIInterrupts(t *testing.T) {
	c := newCLI(t)
	c.ok("ls") // saves firecracker-bin, makes the state directory
	lock, err := os.OpenFile(filepath.Join(c.stateDir, "config.json.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	for _, twice := range []bool{true, false} {
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		// --net-pool, given for the first time, is saved: under the lock.
		cmd := exec.Command(c.bin, "--state-dir", c.stateDir, "--net-pool", "10.9.0.0/16", "ls")
		cmd.Env = c.env
		var errb syncBuilder
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitBlockedOnLock(t, cmd.Process.Pid)
		cmd.Process.Signal(os.Interrupt)
		// Signals do not queue: the second is sent once the first was
		// taken (mvm says so).
		for !strings.Contains(errb.String(), "interrupt again to exit") {
			if unix.Kill(cmd.Process.Pid, 0) != nil {
				t.Fatalf("mvm ended after one ^C without a word: %q", errb.String())
			}
			time.Sleep(time.Millisecond)
		}
		if twice {
			cmd.Process.Signal(os.Interrupt)
		} else {
			unix.Flock(int(lock.Fd()), unix.LOCK_UN)
		}
		err := cmd.Wait()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		switch {
		case twice && (code != 130 || !strings.Contains(errb.String(), "interrupted again")):
			t.Errorf("two ^C: exit %d %q, want 130 at once", code, errb.String())
		case !twice && (code != 1 || !strings.Contains(errb.String(), "context canceled") || strings.Count(errb.String(), "\n") != 2):
			t.Errorf("one ^C: exit %d %q, want 1, the notice and the cancellation on one line", code, errb.String())
		}
		unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	}
}

// waitBlockedOnLock waits until pid waits for a file lock (a "->" line of
// /proc/locks names it).
func waitBlockedOnLock(t *testing.T, pid int) {
	t.Helper()
	for {
		b, err := os.ReadFile("/proc/locks")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) > 5 && f[1] == "->" && f[5] == strconv.Itoa(pid) {
				return
			}
		}
		if err := unix.Kill(pid, 0); err != nil {
			t.Fatalf("mvm %d ended before it waited for the lock", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// syncBuilder is a strings.Builder safe for a writer and a reader.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConfigEgressIfaceGone: `mvm config set egress-iface` refuses a
// name no interface has or that is not an interface name, and forgets the
// setting. A saved interface that is gone since is no error (VMs stay
// listable and removable, new networks fail): TestNetworkCLIEgressGone,
// in a namespace of its own (managed networking now starts, and must not
// touch this host's namespace).
func TestConfigEgressIfaceGone(t *testing.T) {
	c := newCLI(t)
	c.ok("ls") // saves the firecracker binary
	if code, _, errs := c.bare(nil, "config", "set", "egress-iface", "no-such-if0"); code != 2 || !strings.Contains(errs, `egress-iface: this host has no network interface "no-such-if0"`) {
		t.Errorf("config set egress-iface of no interface: exit %d %q", code, errs)
	}
	if code, _, errs := c.bare(nil, "config", "set", "egress-iface", "a/b"); code != 2 || !strings.Contains(errs, "egress-iface must be a network interface name") {
		t.Errorf("config set egress-iface a/b: exit %d %q", code, errs)
	}
	c.bareOK("config", "set", "egress-iface", "lo") // starts no networking
	c.bareOK("config", "set", "egress-iface", "")
	c.bareOK("ls")
	if out := c.bareOK("config", "-o", "json"); strings.Contains(out, "egress-iface") {
		t.Errorf("egress-iface not forgotten: %s", out)
	}
}

// TestConfigRefusesMismatchedJailer: config set refuses a jailer and a
// firecracker of different releases (saved, the pair would make every
// later command fail), saying how to change both; a pair of one release
// is saved.
func TestConfigRefusesMismatchedJailer(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	script := func(name, version string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+version+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fc17, fc114 := script("firecracker-17", "Firecracker v1.7.0"), script("firecracker-114", "Firecracker v1.14.2")
	j17, j114 := script("jailer-17", "Jailer v1.7.0"), script("jailer-114", "Jailer v1.14.2")
	c.bareOK("config", "set", "firecracker-bin", fc17)
	c.bareOK("config", "set", "jailer-bin", j17)
	code, _, errs := c.bare(nil, "config", "set", "firecracker-bin", fc114)
	if code != 2 || !strings.Contains(errs, "is v1.7.0 but firecracker-bin "+fc114+" is v1.14.2") || !strings.Contains(errs, "mvm config set jailer-bin '' first") {
		t.Errorf("config set firecracker-bin of another release than the jailer: exit %d %q", code, errs)
	}
	if code, _, errs := c.bare(nil, "config", "set", "jailer-bin", j114); code != 2 || !strings.Contains(errs, "jailer-bin "+j114+" is v1.14.2") {
		t.Errorf("config set jailer-bin of another release than firecracker: exit %d %q", code, errs)
	}
	// The way the message gives.
	c.bareOK("config", "set", "jailer-bin", "")
	c.bareOK("config", "set", "firecracker-bin", fc114)
	c.bareOK("config", "set", "jailer-bin", j114)
	if out := c.bareOK("config", "-o", "json"); !strings.Contains(out, fc114) || !strings.Contains(out, j114) {
		t.Errorf("settings after the change of both: %s", out)
	}
}

// TestConfigFixesBadSavedValue: a settings file holding a value its
// setting does not take (edited by hand, or written by another version)
// stops every command with a message naming the file and mvm config set;
// mvm config shows it and mvm config set replaces it, after which the
// commands work again.
func TestConfigFixesBadSavedValue(t *testing.T) {
	c := newCLI(t)
	c.ok("ls") // saves the firecracker binary
	path := filepath.Join(c.stateDir, "config.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	s["egress-iface"] = "bad:if0"
	raw, _ = json.Marshal(s)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := c.bare(nil, "ls"); code == 0 || !strings.Contains(errs, path) || !strings.Contains(errs, "mvm config set") {
		t.Errorf("ls with a bad saved value: exit %d %q, want a refusal naming %s and mvm config set", code, errs, path)
	}
	if out := c.bareOK("config"); !strings.Contains(out, "bad:if0") {
		t.Errorf("mvm config does not show the bad value:\n%s", out)
	}
	c.bareOK("config", "set", "egress-iface", "")
	c.bareOK("ls")
	if out := c.bareOK("config", "-o", "json"); strings.Contains(out, "egress-iface") || !strings.Contains(out, "firecracker-bin") {
		t.Errorf("after config set egress-iface '': %s", out)
	}
}
