package firecracker_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// wantErrText fails unless err is non-nil and mentions every part.
func wantErrText(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not mention %q", what, err, p)
		}
	}
}

func TestOpenBadBinary(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "firecracker-noexec")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	for _, c := range []struct {
		name, bin string
		parts     []string
	}{
		{"missing", filepath.Join(dir, "nope"), []string{"nope", "does not exist"}},
		{"not in PATH", "no-such-firecracker-binary", []string{"no-such-firecracker-binary", "not found in PATH"}},
		{"not executable", notExec, []string{notExec, "not executable"}},
		{"directory", dir, []string{dir, "not a regular file"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			state := t.TempDir()
			rt, err := firecracker.Open(context.Background(), firecracker.Config{StateDir: state, FirecrackerBin: c.bin})
			if err == nil {
				rt.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, microvm.ErrInvalidArgument) {
				t.Errorf("error %v does not match ErrInvalidArgument", err)
			}
			wantErrText(t, "Open", err, c.parts...)
		})
	}
	t.Run("config", func(t *testing.T) {
		_, err := firecracker.Open(context.Background(), firecracker.Config{})
		wantErrText(t, "Open without StateDir", err, "StateDir")
		_, err = firecracker.Open(context.Background(), firecracker.Config{StateDir: t.TempDir(), APITimeout: -1})
		wantErrText(t, "Open with a negative timeout", err, "APITimeout")
	})
}

func TestCreateBadFiles(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	base := testSpec(t)
	dir := t.TempDir()
	dangling := filepath.Join(dir, "dangling")
	os.Symlink(filepath.Join(dir, "gone"), dangling)
	fifo := filepath.Join(dir, "fifo")
	syscall.Mkfifo(fifo, 0o644)
	for _, c := range []struct {
		name   string
		mutate func(*microvm.Spec)
		field  string
		parts  []string
	}{
		{"kernel missing", func(s *microvm.Spec) { s.Kernel = filepath.Join(dir, "vmlinux") }, "kernel", []string{"does not exist"}},
		{"kernel is a directory", func(s *microvm.Spec) { s.Kernel = dir }, "kernel", []string{"is a directory"}},
		{"kernel dangling link", func(s *microvm.Spec) { s.Kernel = dangling }, "kernel", []string{"dangling symbolic link"}},
		{"kernel is a fifo", func(s *microvm.Spec) { s.Kernel = fifo }, "kernel", []string{"not a regular file"}},
		{"initrd missing", func(s *microvm.Spec) { s.Initrd = filepath.Join(dir, "initrd") }, "initrd", []string{"does not exist"}},
		{"rootfs missing", func(s *microvm.Spec) { s.RootDrive.Path = filepath.Join(dir, "rootfs") }, "root_drive.path", []string{"does not exist"}},
		{"rootfs is a directory", func(s *microvm.Spec) { s.RootDrive.Path = dir }, "root_drive.path", []string{"is a directory"}},
		{"extra drive missing", func(s *microvm.Spec) {
			s.Drives = []microvm.Drive{{Path: filepath.Join(dir, "data")}}
		}, "drives[0].path", []string{"does not exist"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec := base.Clone()
			c.mutate(&spec)
			_, err := rt.Create(ctx, "badfile", spec)
			var se *microvm.SpecError
			if !errors.As(err, &se) || !se.Has(c.field) {
				t.Fatalf("Create: %v, want a SpecError naming %s", err, c.field)
			}
			wantErrText(t, "Create", err, c.parts...)
			assertClean(t, state, "badfile")
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root reads files whatever their mode (the directory and dangling cases cover the check)")
		}
		spec := base.Clone()
		p := filepath.Join(dir, "secret")
		os.WriteFile(p, nil, 0)
		spec.Kernel = p
		_, err := rt.Create(ctx, "badfile", spec)
		wantErrText(t, "Create", err, "kernel", "cannot be opened")
	})
}

func TestCreateFaults(t *testing.T) {
	ctx := context.Background()
	spec := testSpec(t)
	cases := []struct {
		name   string
		env    []string
		spec   func(microvm.Spec) microvm.Spec
		cfg    func(*firecracker.Config)
		is     []error
		parts  []string
		detail []string // in the *microvm.OpError's Detail, not its message
	}{
		{
			name:   "exits at start",
			env:    []string{"FCSTANDIN_CRASH=GET /"},
			is:     nil,
			parts:  []string{`create vm "f"`, "start firecracker", "killed by signal SIGABRT"},
			detail: []string{"panicked"},
		},
		{
			name:  "socket never appears",
			env:   []string{"FCSTANDIN_START_DELAY=3s"},
			cfg:   func(c *firecracker.Config) { c.ReadyTimeout = 200 * time.Millisecond },
			is:    []error{context.DeadlineExceeded},
			parts: []string{"api.sock did not appear within 200ms (ReadyTimeout)"},
		},
		{
			name: "API refuses a body",
			spec: func(s microvm.Spec) microvm.Spec {
				s.Network = []microvm.NetworkInterface{{HostDevName: "mvmtest0"}}
				big, _ := json.Marshal(map[string]string{"blob": strings.Repeat("x", 60000)})
				s.MMDS = &microvm.MMDS{Data: big}
				return s
			},
			is:    []error{microvm.ErrBackend},
			parts: []string{"set mmds data: PUT /mmds: status 400", "larger than the limit of 51200"},
		},
		{
			name:   "killed while configuring",
			env:    []string{"FCSTANDIN_CRASH=PUT /drives/rootfs"},
			is:     []error{microvm.ErrBackend, microvm.ErrExited},
			parts:  []string{"configure drives", "PUT /drives/rootfs", "SIGABRT"},
			detail: []string{"panicked"},
		},
		{
			name:  "feature the version lacks",
			env:   []string{"FCSTANDIN_API=v1.0"},
			spec:  func(s microvm.Spec) microvm.Spec { s.HugePages = microvm.HugePages2M; return s },
			is:    []error{microvm.ErrUnsupported, microvm.ErrBackend},
			parts: []string{"configure machine", "huge_pages needs firecracker >= 1.7"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.spec != nil && strings.Contains(c.name, "refuses") && os.Geteuid() != 0 {
				t.Skip("needs root to create the TAP device the interface names")
			}
			state := t.TempDir()
			mods := []func(*firecracker.Config){}
			if c.cfg != nil {
				mods = append(mods, c.cfg)
			}
			rt := open(t, state, standin(t, c.env...), mods...)
			defer rt.Close()
			s := spec.Clone()
			if c.spec != nil {
				s = c.spec(s)
			}
			_, err := rt.Create(ctx, "f", s)
			wantErrText(t, "Create", err, c.parts...)
			for _, target := range c.is {
				if !errors.Is(err, target) {
					t.Errorf("error %v does not match %v", err, target)
				}
			}
			var oe *microvm.OpError
			if !errors.As(err, &oe) || oe.Op != "create" || oe.ID != "f" {
				t.Fatalf("error %T %v is not an *microvm.OpError of create f", err, err)
			}
			if msg := err.Error(); len(msg) >= 300 || strings.ContainsAny(msg, "\n\r") || strings.Contains(msg, "*") {
				t.Errorf("error is not one short line without type names (%d bytes): %q", len(msg), msg)
			}
			for _, d := range c.detail {
				if !strings.Contains(strings.Join(oe.Detail, "\n"), d) {
					t.Errorf("Detail %q does not mention %q", oe.Detail, d)
				}
				if strings.Contains(err.Error(), d) {
					t.Errorf("error %q quotes firecracker's output %q: that belongs in Detail", err, d)
				}
			}
			if _, err := rt.Get(ctx, "f"); !errors.Is(err, microvm.ErrNotFound) {
				t.Errorf("Get after a failed Create: %v, want ErrNotFound", err)
			}
			assertClean(t, state, "f")
			t.Logf("error: %v", err)
		})
	}
}

func TestStartCrash(t *testing.T) {
	ctx := context.Background()
	bin, set := standinCtl(t)
	state := t.TempDir()
	rt := open(t, state, bin)
	defer rt.Close()
	if _, err := rt.Create(ctx, "sc", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	// The configured process dies on InstanceStart.
	set("FCSTANDIN_CRASH=InstanceStart")
	vm, _ := rt.Get(ctx, "sc")
	// The created process was spawned before the setting: kill it with
	// the request instead. A fresh Start then spawns processes that crash.
	syscall.Kill(vm.Backend.PID, syscall.SIGKILL)
	// Wait until the runtime has seen the process end: a Start racing the
	// kill may reach the dying process, whose InstanceStart then fails.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if vm, _ = rt.Get(ctx, "sc"); vm.Backend.PID == 0 || time.Now().After(deadline) {
			break
		}
	}
	_, err := rt.Start(ctx, "sc")
	wantErrText(t, "Start", err, `start vm "sc"`, "boot", "PUT /actions", "SIGABRT")
	if !errors.Is(err, microvm.ErrExited) {
		t.Errorf("Start error %v does not match ErrExited", err)
	}
	vm, _ = rt.Get(ctx, "sc")
	if vm.Status != microvm.StatusCreated || vm.Backend.PID != 0 || vm.LastError == "" {
		t.Errorf("after a crashed Start: %s pid %d LastError %q; want created, no process, a reason", vm.Status, vm.Backend.PID, vm.LastError)
	}
	set()
	if _, err := rt.Start(ctx, "sc"); err != nil {
		t.Fatalf("Start after the crash: %v", err)
	}
	// Killed in the middle of Stop: the stop still ends stopped.
	set("FCSTANDIN_CRASH=SendCtrlAltDel")
	if _, err := rt.Stop(ctx, "sc", nil); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	set()
	vm, err = rt.Start(ctx, "sc") // this process does not crash on Ctrl-Alt-Del
	if err != nil {
		t.Fatal(err)
	}
	pid := vm.Backend.PID
	syscall.Kill(pid, syscall.SIGKILL)
	_, err = rt.Stop(ctx, "sc", nil) // may race the crash watcher: stopped or refused as failed
	if err != nil && !errors.Is(err, microvm.ErrInvalidTransition) {
		t.Fatalf("Stop of a VM whose process was just killed: %v", err)
	}
	if _, err := rt.Destroy(ctx, "sc"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, state, "sc")
}

func TestCrashNoticed(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	if _, err := rt.Create(ctx, "cn", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "cn"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	kill(t, rt, "cn")
	vm := waitStatus(t, rt, "cn", microvm.StatusFailed)
	t.Logf("crash noticed after %v: %s", time.Since(t0), vm.LastError)
	if !strings.Contains(vm.LastError, "killed by signal SIGKILL") {
		t.Errorf("LastError %q does not give the signal", vm.LastError)
	}
	if vm.Backend.PID != 0 {
		t.Errorf("failed VM still shows pid %d", vm.Backend.PID)
	}
	if _, err := os.Stat(filepath.Join(state, "vms", "cn", "api.sock")); err == nil {
		t.Errorf("the crashed VM's socket was not removed")
	}
	// A crash by the guest (SIGSEGV some time after the start).
	rt2, _ := newRuntime(t, "FCSTANDIN_CRASH=after-start:100ms")
	if _, err := rt2.Create(ctx, "cs", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt2.Start(ctx, "cs"); err != nil {
		t.Fatal(err)
	}
	vm = waitStatus(t, rt2, "cs", microvm.StatusFailed)
	if !strings.Contains(vm.LastError, "SIGSEGV") || len(vm.LastErrorDetail) == 0 {
		t.Errorf("LastError %q, LastErrorDetail %q: want the signal and the console's last lines", vm.LastError, vm.LastErrorDetail)
	}
	if strings.Contains(vm.LastError, vm.LastErrorDetail[len(vm.LastErrorDetail)-1]) {
		t.Errorf("LastError %q quotes the console: that belongs in LastErrorDetail", vm.LastError)
	}
}

// TestGuestShutdown: a firecracker that exits by itself with status 0
// (the guest reset or powered off) leaves its VM stopped, cleaned up like
// after Stop, with no LastError; a non-zero status still fails it; and a
// child that ended with 0 while no runtime watched it is reaped, and its
// status reaches the next runtime (stopped too).
func TestGuestShutdown(t *testing.T) {
	state := t.TempDir()
	bin, set := standinCtl(t)
	rt := open(t, state, bin)
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	ctx := context.Background()
	set("FCSTANDIN_EXIT=after-start:300ms") // Create spawns the process Start boots
	if _, err := rt.Create(ctx, "gs", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "gs"); err != nil {
		t.Fatal(err)
	}
	vm := waitStatus(t, rt, "gs", microvm.StatusStopped)
	if vm.LastError != "" || vm.Backend.PID != 0 {
		t.Errorf("after the guest's reset: LastError %q, pid %d; want none", vm.LastError, vm.Backend.PID)
	}
	if _, err := os.Stat(filepath.Join(state, "vms", "gs", "api.sock")); err == nil {
		t.Errorf("the stopped VM's API socket was not removed")
	}
	if pids := procsUnder(state); len(pids) != 0 {
		t.Errorf("processes left after the guest's reset: %v", pids)
	}
	if out, err := rt.Logs(ctx, "gs", 0); err != nil || !slices.ContainsFunc(out, func(l string) bool {
		return strings.Contains(l, "reboot: Restarting system")
	}) {
		t.Errorf("console after the reset: %q, %v; want the guest's reset line", out, err)
	}
	if _, err := rt.Stop(ctx, "gs", nil); !errors.Is(err, microvm.ErrInvalidTransition) {
		t.Errorf("Stop of the stopped VM: %v; want ErrInvalidTransition", err)
	}

	// Start boots it again; a non-zero exit status fails it.
	set("FCSTANDIN_EXIT=after-start:300ms:1")
	if _, err := rt.Start(ctx, "gs"); err != nil {
		t.Fatalf("Start after the guest's reset: %v", err)
	}
	vm = waitStatus(t, rt, "gs", microvm.StatusFailed)
	if !strings.Contains(vm.LastError, "exit status 1") || vm.Backend.PID != 0 {
		t.Errorf("after exit status 1: LastError %q, pid %d; want the status and no process", vm.LastError, vm.Backend.PID)
	}

	// A clean exit while no runtime watches: this process reaps its child
	// anyway (no zombie), and the next runtime learns its real status (0:
	// the guest shut down), so the VM is stopped, not failed.
	set("FCSTANDIN_EXIT=after-start:300ms")
	vm, err := rt.Start(ctx, "gs")
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()
	for deadline := time.Now().Add(10 * time.Second); syscall.Kill(vm.Backend.PID, 0) == nil; {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d not reaped", vm.Backend.PID)
		}
		time.Sleep(time.Millisecond)
	}
	set()
	rt = open(t, state, bin)
	vm, err = rt.Get(ctx, "gs")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Status != microvm.StatusStopped || vm.LastError != "" {
		t.Errorf("VM whose process exited 0 while no runtime ran: %s, LastError %q; want stopped, as after a guest shutdown", vm.Status, vm.LastError)
	}
	if _, err := rt.Destroy(ctx, "gs"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, state, "gs")
}

// TestKVMStopIsNoShutdown: Firecracker v1.7 exits with status 0 after KVM
// stopped a vCPU (KVM_EXIT_INTERNAL_ERROR, as kvm-pvm does to an
// unmodified guest kernel); that is a dead guest, not one that shut itself
// down: the VM turns failed, saying so, not stopped with no error.
func TestKVMStopIsNoShutdown(t *testing.T) {
	state := t.TempDir()
	bin, set := standinCtl(t)
	rt := open(t, state, bin)
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	ctx := context.Background()
	set("FCSTANDIN_EXIT=after-start:100ms:kvm")
	if _, err := rt.Create(ctx, "kv", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "kv"); err != nil {
		t.Fatal(err)
	}
	vm := waitStatus(t, rt, "kv", microvm.StatusFailed)
	if !strings.Contains(vm.LastError, "exit status 0 (firecracker's log says KVM_EXIT_INTERNAL_ERROR on vCPU 0: KVM could not run the guest)") || vm.Backend.PID != 0 {
		t.Errorf("LastError %q, pid %d; want exit status 0 with the vCPU's fault, and no process", vm.LastError, vm.Backend.PID)
	}
}

func TestDirectoryRemoved(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	if _, err := rt.Create(ctx, "dr", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "dr"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(state, "vms", "dr")); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Pause(ctx, "dr")
	wantErrText(t, "Pause", err, `pause vm "dr"`, "api socket is missing (was the VM directory removed?)")
	if vm, _ := rt.Get(ctx, "dr"); vm.Status != microvm.StatusRunning {
		t.Errorf("status after the failed Pause: %s, want running", vm.Status)
	}
	if _, err := rt.Stop(ctx, "dr", &microvm.StopOptions{Timeout: 100 * time.Millisecond}); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := rt.Start(ctx, "dr"); err != nil {
		t.Fatalf("Start recreates the directory: %v", err)
	}
	os.RemoveAll(filepath.Join(state, "vms", "dr"))
	if _, err := rt.Destroy(ctx, "dr"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	assertClean(t, state, "dr")
}

// TestDriverKilledMidOperation kills the process running an operation (the
// way an mvm command can be killed) and checks that the next Open finishes
// or undoes it.
// waitMidOperation waits (up to 20 s) until the driver of op on VM id is
// inside it: for create, a firecracker runs in the VM's directory (there
// is no record yet); otherwise the record names the operation.
func waitMidOperation(t *testing.T, state, id, op string) {
	t.Helper()
	dir := filepath.Join(state, "vms", id)
	rec := filepath.Join(state, "registry", "vm", id+".json")
	for deadline := time.Now().Add(20 * time.Second); ; {
		if op == "create" {
			if len(procsUnder(dir)) > 0 {
				return
			}
		} else if b, err := os.ReadFile(rec); err == nil && strings.Contains(string(b), `"op":"`+op+`"`) {
			time.Sleep(100 * time.Millisecond) // past the write, into the wait
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the driver of %s never got inside it", op)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDriverKilledMidOperation(t *testing.T) {
	spec := testSpec(t)
	ctx := context.Background()
	cases := []struct {
		name   string
		pre    []string // ops done first, by a child that completes
		op     string   // the op of the child that is killed
		env    []string // settings of processes started during op
		preEnv []string // settings of processes started by pre
		want   microvm.Status
		exists bool
	}{
		{"create", nil, "create", []string{"FCSTANDIN_START_DELAY=3s"}, nil, "", false},
		{"start", []string{"create", "start", "stop"}, "start", []string{"FCSTANDIN_START_DELAY=3s"}, nil, microvm.StatusStopped, true},
		// The process the stop is asked of is started by pre: the delay
		// must be set then, or it dies before the driver is killed and
		// the recovery of a live process is never run.
		{"stop", []string{"create", "start"}, "stop", nil, []string{"FCSTANDIN_STOP_DELAY=5s"}, microvm.StatusStopped, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			state := t.TempDir()
			bin, set := standinCtl(t, c.preEnv...)
			var pre microvm.VM
			if c.pre != nil {
				pre = runChild(t, childJob{State: state, Bin: bin, ID: "k", Spec: spec, Ops: c.pre})
			}
			set(c.env...)
			raw, _ := json.Marshal(childJob{State: state, Bin: bin, ID: "k", Spec: spec, Ops: []string{c.op}})
			cmd := execChild(raw)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitMidOperation(t, state, "k", c.op) // the child is now waiting on the stand-in
			cmd.Process.Kill()
			cmd.Wait()
			set()
			if c.op == "stop" && !alive(pre.Backend.PID) {
				t.Fatalf("the firecracker being stopped (pid %d) died before the driver was killed: the recovery of a live process is not tested", pre.Backend.PID)
			}
			rt := open(t, state, bin)
			defer rt.Close()
			vm, err := rt.Get(ctx, "k")
			if !c.exists {
				if !errors.Is(err, microvm.ErrNotFound) {
					t.Fatalf("Get after an interrupted %s: %v (%s), want ErrNotFound", c.op, err, vm.Status)
				}
				assertClean(t, state, "k")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if vm.Status != c.want || vm.Backend.PID != 0 {
				t.Fatalf("after an interrupted %s: %s pid %d (%q), want %s without a process", c.op, vm.Status, vm.Backend.PID, vm.LastError, c.want)
			}
			if pids := procsUnder(state); len(pids) > 0 {
				t.Errorf("processes left: %v", pids)
			}
			if _, err := rt.Start(ctx, "k"); err != nil {
				t.Fatalf("Start after recovery: %v", err)
			}
			if _, err := rt.Destroy(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			assertClean(t, state, "k")
		})
	}
}
