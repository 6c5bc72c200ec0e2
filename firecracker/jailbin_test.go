package firecracker_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// launchLogger returns a jailer that runs jailer and then appends to
// log, per launch, one line: the exec file's name, the sha256 of the
// executable of the process the jailer left in the chroot
// (/proc/PID/exe, once it no longer runs the jailer) and whether the
// chroot <base>/<exec name>/<id>/root exists.
func launchLogger(t *testing.T, jailer, log string) string {
	after := `while [ $# -gt 0 ]; do
case "$1" in --id) id=$2;; --exec-file) exe=$2;; --chroot-base-dir) base=$2;; --) break;; esac
shift
done
name=${exe##*/}
pid=$(cat "$base/$name/$id/root/$name.pid")
# The pid is the jailer's child, which runs the jailer until it execs
# firecracker.
jsum=$(sha256sum < ` + shellQuote(jailer) + `)
i=0
sum=$(sha256sum < /proc/$pid/exe)
while [ "$sum" = "$jsum" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); sum=$(sha256sum < /proc/$pid/exe); done
root=no; [ -d "$base/$name/$id/root" ] && root=yes
echo "$name ${sum%% *} $root" >> ` + shellQuote(log)
	return jailerWrapper(t, jailer, "", after)
}

// launches reads the lines launchLogger wrote.
func launches(t *testing.T, log string) [][]string {
	t.Helper()
	raw, err := os.ReadFile(log)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var out [][]string
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if line != "" {
			out = append(out, strings.Fields(line))
		}
	}
	return out
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:])
}

// versionOf runs bin --version and returns the version after prefix.
func versionOf(t *testing.T, bin, prefix string) string {
	t.Helper()
	out, err := runVersion(bin)
	if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	v, ok := strings.CutPrefix(out, prefix)
	if !ok {
		t.Fatalf("%s --version: %q", bin, out)
	}
	return v
}

// crashCreated SIGKILLs the process of the created VM id and waits until
// rt has noticed (no pid), so that the next Start launches a fresh one.
func crashCreated(t *testing.T, rt *firecracker.Runtime, id string) {
	t.Helper()
	ctx := context.Background()
	vm, err := rt.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Backend.PID == 0 {
		return
	}
	if err := syscall.Kill(vm.Backend.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		vm, err := rt.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if vm.Backend.PID == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the crash of %s was not noticed within 5s", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestJailedVMKeepsItsPair: a jailed VM created with jailer v1.0 and
// firecracker v1.0 records both (VM.Backend.Jailer, Binary); a second
// runtime of the same state directory, configured with the v1.7 pair,
// relaunches it with the recorded v1.0 pair (the process in the chroot
// <base>/firecracker-v1.0.0/<id> runs the v1.0 executable, and its API
// answers GET / with v1.0), while a VM it creates gets its own v1.7
// pair. The real binaries run up to InstanceStart (the spec's kernel is
// not one), where the Start fails.
func TestJailedVMKeepsItsPair(t *testing.T) {
	pairs := jailPairs(t)
	p10, p17 := pairs[0], pairs[1]
	ctx := context.Background()
	state := t.TempDir()
	log := filepath.Join(t.TempDir(), "launches")
	j10 := launchLogger(t, p10.jailer, log)
	jc1 := jailConfig(t, j10)
	rt1 := openJailed(t, state, p10.fc, jc1)
	vm, err := rt1.Create(ctx, "kp", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	v10 := versionOf(t, p10.fc, "Firecracker v")
	if vm.Backend.Binary != p10.fc || vm.Backend.Jailer != j10 || vm.Backend.Version != v10 {
		t.Fatalf("created: binary %q jailer %q version %q, want %q %q %q", vm.Backend.Binary, vm.Backend.Jailer, vm.Backend.Version, p10.fc, j10, v10)
	}
	if err := rt1.Close(); err != nil {
		t.Fatal(err)
	}

	// The same settings, another release.
	jc2 := *jc1
	jc2.Bin = p17.jailer
	rt2 := openJailed(t, state, p17.fc, &jc2)
	t.Cleanup(func() { checkNoJailLeft(t, state) })
	crashCreated(t, rt2, "kp")
	_, err = rt2.Start(ctx, "kp")
	var be *microvm.BackendError
	if !errors.As(err, &be) || be.Op != "boot" {
		t.Fatalf("Start by the v1.7 runtime: %v, want the boot step's failure (the process ran up to InstanceStart)", err)
	}
	got := launches(t, log)
	if len(got) != 2 {
		t.Fatalf("launches through the recorded jailer: %q, want 2 (Create, Start)", got)
	}
	want := []string{filepath.Base(p10.fc), sha256File(t, p10.fc), "yes"}
	for i, l := range got {
		if strings.Join(l, " ") != strings.Join(want, " ") {
			t.Errorf("launch %d: exec name, sha256 of /proc/PID/exe, chroot: %q, want %q (firecracker v1.0 in %s/jail/%s/kp)", i, l, want, state, want[0])
		}
	}
	vm, err = rt2.Get(ctx, "kp")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Backend.Binary != p10.fc || vm.Backend.Jailer != j10 || vm.Backend.Version != v10 {
		t.Errorf("relaunched by the v1.7 runtime: binary %q jailer %q version (GET /) %q, want %q %q %q",
			vm.Backend.Binary, vm.Backend.Jailer, vm.Backend.Version, p10.fc, j10, v10)
	}
	v17 := versionOf(t, p17.fc, "Firecracker v")
	vm2, err := rt2.Create(ctx, "kn", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if vm2.Backend.Binary != p17.fc || vm2.Backend.Jailer != p17.jailer || vm2.Backend.Version != v17 ||
		vm2.Backend.Jail == nil || !strings.Contains(vm2.Backend.Jail.Chroot, "/firecracker-v1.7.0/kn/") {
		t.Errorf("new VM: binary %q jailer %q version %q jail %+v, want the runtime's v1.7 pair", vm2.Backend.Binary, vm2.Backend.Jailer, vm2.Backend.Version, vm2.Backend.Jail)
	}
	if n := len(launches(t, log)); n != 2 {
		t.Errorf("the new VM went through the v1.0 jailer (%d launches logged)", n)
	}
	destroyAll(t, rt2)
	assertNoJailProcs(t, state)
}

// copyFile copies src to dst (mode 0755) through a temporary file renamed
// over dst: a new file, as an upgrade puts in place.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// checkNothingStarted fails t if the VM id holds a process, a jail (uid
// lease, chroot, cgroup) or a process runs under state.
func checkNothingStarted(t *testing.T, rt *firecracker.Runtime, state, id, parent string) {
	t.Helper()
	vm, err := rt.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Backend.PID != 0 || vm.Backend.Jail != nil {
		t.Errorf("after the refused start: pid %d, jail %+v", vm.Backend.PID, vm.Backend.Jail)
	}
	if uids, _ := os.ReadDir(filepath.Join(state, "registry", "uid")); len(uids) != 0 {
		t.Errorf("%d uid leases left", len(uids))
	}
	filepath.WalkDir(filepath.Join(state, "jail"), func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == id {
			t.Errorf("chroot directory %s left", path)
		}
		return nil
	})
	for _, c := range []string{"cpu", "memory", "pids"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, parent, id)); err == nil {
			t.Errorf("cgroup %s/%s/%s left", c, parent, id)
		}
	}
	assertNoJailProcs(t, state)
}

// TestJailedRecordedBinaryChanged: the jailer or firecracker a jailed VM
// recorded is replaced by another release, or removed: its next Start
// fails with ErrBinaryChanged naming the file and both versions (one
// line), starts nothing and leaves nothing (process, uid lease, chroot,
// cgroup); with the recorded release put back, the VM starts again (up to
// InstanceStart). A runtime with SkipVersionCheck runs a pair replaced
// whole by another release, and the record takes its versions.
func TestJailedRecordedBinaryChanged(t *testing.T) {
	pairs := jailPairs(t)
	p10, p17 := pairs[0], pairs[1]
	ctx := context.Background()
	state := t.TempDir()
	dir := t.TempDir()
	jl, fc := filepath.Join(dir, "jailer"), filepath.Join(dir, "firecracker")
	copyFile(t, p10.jailer, jl)
	copyFile(t, p10.fc, fc)
	jc := jailConfig(t, jl)
	rt := openJailed(t, state, fc, jc)
	t.Cleanup(func() { checkNoJailLeft(t, state) })
	if _, err := rt.Create(ctx, "rb", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	crashCreated(t, rt, "rb")
	v10, v17 := versionOf(t, p10.fc, "Firecracker v"), versionOf(t, p17.fc, "Firecracker v")

	for _, tc := range []struct {
		name, path, with string
		want             []string
	}{
		{"firecracker-replaced", fc, p17.fc, []string{"firecracker " + fc, "was v" + v10, "is now v" + v17}},
		{"jailer-replaced", jl, p17.jailer, []string{"jailer " + jl, "was v" + v10, "is now v" + v17}},
		{"jailer-gone", jl, "", []string{"jailer " + jl, "v" + v10, "is gone"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := p10.fc
			if tc.path == jl {
				orig = p10.jailer
			}
			if tc.with == "" {
				if err := os.Remove(tc.path); err != nil {
					t.Fatal(err)
				}
			} else {
				copyFile(t, tc.with, tc.path)
			}
			_, err := rt.Start(ctx, "rb")
			msg := fmt.Sprint(err)
			if !errors.Is(err, firecracker.ErrBinaryChanged) {
				t.Errorf("Start: %v, want ErrBinaryChanged", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("Start: %q does not say %q", msg, w)
				}
			}
			if tc.with == "" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Start: %v, want fs.ErrNotExist too", err)
			}
			if strings.Contains(msg, "\n") || len(msg) >= 300 {
				t.Errorf("Start's error is not one line under 300 bytes (%d): %q", len(msg), msg)
			}
			t.Logf("%s", msg)
			checkNothingStarted(t, rt, state, "rb", jc.ParentCgroup)
			// The recorded release put back: the VM runs again.
			copyFile(t, orig, tc.path)
			_, err = rt.Start(ctx, "rb")
			var be *microvm.BackendError
			if !errors.As(err, &be) || be.Op != "boot" {
				t.Errorf("Start with the recorded pair back: %v, want the boot step's failure", err)
			}
			crashCreated(t, rt, "rb")
		})
	}

	// A pair replaced whole by v1.7, with SkipVersionCheck: run, and
	// recorded.
	copyFile(t, p17.jailer, jl)
	copyFile(t, p17.fc, fc)
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	skip := *jc
	skip.SkipVersionCheck = true
	rt2 := openJailed(t, state, fc, &skip)
	_, err := rt2.Start(ctx, "rb")
	var be *microvm.BackendError
	if !errors.As(err, &be) || be.Op != "boot" {
		t.Fatalf("Start of the replaced pair with SkipVersionCheck: %v, want the boot step's failure", err)
	}
	vm, err := rt2.Get(ctx, "rb")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Backend.Version != v17 {
		t.Errorf("version after the replaced pair ran: %q, want %q", vm.Backend.Version, v17)
	}
	_, rec := readRecord(t, state, "rb")
	if j, _ := rec["jailer"].(map[string]any); j["version"] != v17 || j["firecracker_version"] != v17 {
		t.Errorf("recorded pair after SkipVersionCheck: %v, want both v%s", rec["jailer"], v17)
	}
}

// readRecord reads the registry file of VM id as JSON and returns it
// and its data (the VM's record proper).
func readRecord(t *testing.T, state, id string) (file, rec map[string]any) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(state, "registry", "vm", id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	rec, _ = file["data"].(map[string]any)
	if rec == nil {
		t.Fatalf("registry file of %s has no data: %s", id, raw)
	}
	return file, rec
}

// writeRecord replaces the registry file of VM id.
func writeRecord(t *testing.T, state, id string, file map[string]any) {
	t.Helper()
	raw, err := json.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "registry", "vm", id+".json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestJailedRecordWithoutJailer: a record written before the jailer was
// kept (no "jailer") still loads and runs: the runtime's jailer is paired
// with the VM's recorded firecracker, and then recorded. A runtime whose
// jailer is of another release than that firecracker (v1.7 with a VM of
// v1.0) refuses to start it, naming both versions, and leaves nothing.
func TestJailedRecordWithoutJailer(t *testing.T) {
	pairs := jailPairs(t)
	p10, p17 := pairs[0], pairs[1]
	ctx := context.Background()
	state := t.TempDir()
	jc := jailConfig(t, p10.jailer)
	rt := openJailed(t, state, p10.fc, jc)
	t.Cleanup(func() { checkNoJailLeft(t, state) })
	if _, err := rt.Create(ctx, "old", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	crashCreated(t, rt, "old")
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	file, rec := readRecord(t, state, "old")
	if rec["jailer"] == nil {
		t.Fatalf("record has no jailer: %v", rec)
	}
	delete(rec, "jailer") // as the previous code wrote it
	writeRecord(t, state, "old", file)

	other := *jc
	other.Bin = p17.jailer
	rt17 := openJailed(t, state, p17.fc, &other)
	vm, err := rt17.Get(ctx, "old")
	if err != nil {
		t.Fatalf("Get of a record without a jailer: %v", err)
	}
	if vm.Backend.Jailer != "" || vm.Backend.Binary != p10.fc {
		t.Errorf("old record: jailer %q binary %q, want none and %q", vm.Backend.Jailer, vm.Backend.Binary, p10.fc)
	}
	v10, v17 := versionOf(t, p10.fc, "Firecracker v"), versionOf(t, p17.fc, "Firecracker v")
	_, err = rt17.Start(ctx, "old")
	msg := fmt.Sprint(err)
	if !errors.Is(err, firecracker.ErrJailer) || !strings.Contains(msg, "v"+v17) || !strings.Contains(msg, "v"+v10) ||
		!strings.Contains(msg, p10.fc) || !strings.Contains(msg, "same release") {
		t.Errorf("Start pairing jailer v1.7 with the VM's firecracker v1.0: %v, want ErrJailer naming both versions", err)
	}
	checkNothingStarted(t, rt17, state, "old", jc.ParentCgroup)
	if _, rec := readRecord(t, state, "old"); rec["jailer"] != nil {
		t.Errorf("the refused pair was recorded: %v", rec["jailer"])
	}
	if err := rt17.Close(); err != nil {
		t.Fatal(err)
	}

	rt10 := openJailed(t, state, p10.fc, jc)
	_, err = rt10.Start(ctx, "old")
	var be *microvm.BackendError
	if !errors.As(err, &be) || be.Op != "boot" {
		t.Fatalf("Start by a v1.0 runtime: %v, want the boot step's failure", err)
	}
	vm, err = rt10.Get(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Backend.Jailer != p10.jailer || vm.Backend.Version != v10 {
		t.Errorf("after the first jailed start: jailer %q version %q, want %q %q", vm.Backend.Jailer, vm.Backend.Version, p10.jailer, v10)
	}
}

// TestJailedSweepOtherExecName: a chroot no record explains, under the
// exec name of another firecracker than the runtime's (a VM of another
// release), is removed at Open like one under the runtime's own.
func TestJailedSweepOtherExecName(t *testing.T) {
	pairs := jailPairs(t)
	state := t.TempDir()
	stray := filepath.Join(state, "jail", "firecracker-v1.0.0", "ghost", "root")
	if err := os.MkdirAll(stray, 0o700); err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(state, "jail", "not-a-chroot", "ghost", "root")
	if err := os.MkdirAll(kept, 0o700); err != nil {
		t.Fatal(err)
	}
	rt := openJailed(t, state, pairs[1].fc, jailConfig(t, pairs[1].jailer))
	defer rt.Close()
	if _, err := os.Stat(filepath.Dir(stray)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stray chroot %s under another exec name: %v, want removed", filepath.Dir(stray), err)
	}
	if _, err := os.Stat(kept); err != nil {
		t.Errorf("%s (no exec name the jailer runs) was removed: %v", kept, err)
	}
	os.RemoveAll(filepath.Join(state, "jail", "not-a-chroot"))
}

// runVersion runs bin --version and returns the first line of its output.
func runVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line, err
}

// TestJailedVMRefusedByDirectRuntime: a runtime opened without a jailer
// over the state directory of jailed VMs refuses to start one (ErrJailer,
// one line naming the recorded jailer) rather than run it outside its
// sandbox, and starts nothing; the jailed runtime then starts it as ever.
func TestJailedVMRefusedByDirectRuntime(t *testing.T) {
	p := jailPairs(t)[1]
	ctx := context.Background()
	state := t.TempDir()
	rtJ := openJailed(t, state, p.fc, jailConfig(t, p.jailer))
	if _, err := rtJ.Create(ctx, "sb", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	crashCreated(t, rtJ, "sb")
	t.Cleanup(func() { checkNoJailLeft(t, state) })

	rtD := open(t, state, p.fc)
	defer rtD.Close()
	_, err := rtD.Start(ctx, "sb")
	if !errors.Is(err, firecracker.ErrJailer) || !strings.Contains(err.Error(), p.jailer) ||
		strings.Contains(err.Error(), "\n") || len(err.Error()) > 300 {
		t.Fatalf("Start by a runtime without a jailer: %v, want ErrJailer in one line naming %s", err, p.jailer)
	}
	vm, err := rtD.Get(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Backend.PID != 0 || vm.Backend.Jail != nil {
		t.Fatalf("after the refusal: pid %d jail %+v, want nothing started", vm.Backend.PID, vm.Backend.Jail)
	}
	assertNoJailProcs(t, state)

	_, err = rtJ.Start(ctx, "sb")
	var be *microvm.BackendError
	if !errors.As(err, &be) || be.Op != "boot" {
		t.Fatalf("Start by the jailed runtime: %v, want the boot step's failure (the process ran up to InstanceStart)", err)
	}
}
