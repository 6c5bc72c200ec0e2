package memory_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/conformance"
	"github.com/mvm-dev/microvm/memory"
)

func validSpec() microvm.Spec {
	return microvm.Spec{
		Kernel:    "/var/lib/mvm/vmlinux",
		RootDrive: microvm.Drive{Path: "/var/lib/mvm/rootfs.ext4"},
		VCPUs:     1,
		MemoryMiB: 128,
	}
}

func TestConformance(t *testing.T) {
	conformance.Run(t, conformance.Harness{
		New:  func(t *testing.T) microvm.Runtime { return memory.New(nil) },
		Spec: func(t *testing.T) microvm.Spec { return validSpec() },
		// Memory is not durable; reopening it is the identity, which still
		// runs the suite's Reopen checks against the same state.
		Reopen: func(t *testing.T, rt microvm.Runtime) microvm.Runtime { return rt },
		Crash: func(t *testing.T, rt microvm.Runtime, id string) {
			if err := rt.(*memory.Runtime).Crash(id, "killed by the conformance suite"); err != nil {
				t.Fatalf("Crash(%q): %v", id, err)
			}
		},
		Shutdown: func(t *testing.T, rt microvm.Runtime, id string) {
			if err := rt.(*memory.Runtime).Shutdown(id); err != nil {
				t.Fatalf("Shutdown(%q): %v", id, err)
			}
		},
	})
}

// TestShutdown: the guest-shutdown hook stops a running VM through
// OpShutdown, with no LastError, and is refused from other states.
func TestShutdown(t *testing.T) {
	rt := memory.New(nil)
	defer rt.Close()
	if _, err := rt.Create(t.Context(), "a", validSpec()); err != nil {
		t.Fatal(err)
	}
	var te *microvm.TransitionError
	if err := rt.Shutdown("a"); !errors.As(err, &te) || te.Op != microvm.OpShutdown {
		t.Errorf("Shutdown of a created VM: %v, want a TransitionError for shutdown", err)
	}
	if _, err := rt.Start(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	if err := rt.Shutdown("a"); err != nil {
		t.Fatal(err)
	}
	if vm := must(rt.Get(t.Context(), "a")); vm.Status != microvm.StatusStopped || vm.LastError != "" {
		t.Errorf("after Shutdown: %s, LastError %q; want stopped, none", vm.Status, vm.LastError)
	}
}

// fixedClock returns a clock that starts at 2026-11-25T17:00:00Z and
// advances one second per call.
func fixedClock() func() time.Time {
	var mu sync.Mutex
	now := time.Date(2026, 11, 25, 17, 0, 0, 0, time.UTC)
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t := now
		now = now.Add(time.Second)
		return t
	}
}

func newRuntime(t *testing.T) *memory.Runtime {
	t.Helper()
	rt := memory.New(&memory.Options{Clock: fixedClock()})
	t.Cleanup(func() { rt.Close() })
	return rt
}

// must returns v, and panics (failing the test with a stack) if err is not
// nil. Go cannot pass a multi-value call along with t, hence no t here.
func must[T any](v T, err error) T {
	if err != nil {
		panic(fmt.Sprintf("unexpected error: %v", err))
	}
	return v
}

func running(t *testing.T, rt *memory.Runtime, id string, spec microvm.Spec) {
	t.Helper()
	must(rt.Create(t.Context(), id, spec))
	must(rt.Start(t.Context(), id))
}

func TestBackendAndTimes(t *testing.T) {
	rt := newRuntime(t)
	vm := must(rt.Create(t.Context(), "a", validSpec()))
	if vm.Backend.Runtime != memory.RuntimeName {
		t.Errorf("Backend.Runtime = %q, want %q", vm.Backend.Runtime, memory.RuntimeName)
	}
	t0 := time.Date(2026, 11, 25, 17, 0, 0, 0, time.UTC)
	if !vm.CreatedAt.Equal(t0) || !vm.UpdatedAt.Equal(t0) {
		t.Errorf("CreatedAt %v, UpdatedAt %v; want both %v", vm.CreatedAt, vm.UpdatedAt, t0)
	}
	vm = must(rt.Start(t.Context(), "a"))
	if !vm.CreatedAt.Equal(t0) || !vm.UpdatedAt.After(t0) {
		t.Errorf("after Start: CreatedAt %v, UpdatedAt %v; want UpdatedAt after CreatedAt", vm.CreatedAt, vm.UpdatedAt)
	}
	// A snapshot does not change the status, so not UpdatedAt either.
	must(rt.Snapshot(t.Context(), "a", "s", nil))
	if got := must(rt.Get(t.Context(), "a")); !got.UpdatedAt.Equal(vm.UpdatedAt) {
		t.Errorf("UpdatedAt moved on Snapshot: %v, was %v", got.UpdatedAt, vm.UpdatedAt)
	}
}

func TestLogs(t *testing.T) {
	rt := newRuntime(t)
	running(t, rt, "a", validSpec())
	must(rt.Pause(t.Context(), "a"))
	must(rt.Snapshot(t.Context(), "a", "s1", nil))
	must(rt.Stop(t.Context(), "a", nil))
	want := []string{ // the test clock ticks one second per operation
		"2026-11-25T17:00:00Z created",
		"2026-11-25T17:00:01Z started",
		"2026-11-25T17:00:02Z paused",
		"2026-11-25T17:00:03Z snapshot s1 (full)",
		"2026-11-25T17:00:04Z stopped (timeout 10s)",
	}
	got := must(rt.Logs(t.Context(), "a", 0))
	if !slices.Equal(got, want) {
		t.Errorf("Logs =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := must(rt.Logs(t.Context(), "a", 2)); len(got) != 2 || !strings.HasSuffix(got[1], "stopped (timeout 10s)") {
		t.Errorf("Logs(2) = %q, want the last two lines", got)
	}
	if got := must(rt.Logs(t.Context(), "a", 100)); len(got) != len(want) {
		t.Errorf("Logs(100) returned %d lines, want all %d", len(got), len(want))
	}
}

func TestLogsBounded(t *testing.T) {
	rt := memory.New(nil)
	running(t, rt, "a", validSpec())
	for range memory.MaxLogLines {
		must(rt.Pause(t.Context(), "a"))
		must(rt.Resume(t.Context(), "a"))
	}
	got := must(rt.Logs(t.Context(), "a", 0))
	if len(got) != memory.MaxLogLines {
		t.Fatalf("kept %d lines, want %d", len(got), memory.MaxLogLines)
	}
	if !strings.HasSuffix(got[len(got)-1], " resumed") || !strings.HasSuffix(got[0], " paused") {
		t.Errorf("kept lines %q ... %q, want the newest ones", got[0], got[len(got)-1])
	}
}

func TestCrash(t *testing.T) {
	rt := newRuntime(t)
	must(rt.Create(t.Context(), "a", validSpec()))

	err := rt.Crash("a", "boom")
	var te *microvm.TransitionError
	if !errors.As(err, &te) || te.Op != microvm.OpCrash || te.From != microvm.StatusCreated {
		t.Fatalf("Crash of a created VM: %v, want a TransitionError for crash from created", err)
	}
	must(rt.Start(t.Context(), "a"))
	if err := rt.Crash("a", "out of memory"); err != nil {
		t.Fatal(err)
	}
	vm := must(rt.Get(t.Context(), "a"))
	if vm.Status != microvm.StatusFailed || vm.LastError != "out of memory" {
		t.Errorf("after Crash: status %s, LastError %q; want failed, %q", vm.Status, vm.LastError, "out of memory")
	}
	logs := must(rt.Logs(t.Context(), "a", 1))
	if len(logs) != 1 || !strings.HasSuffix(logs[0], " failed: out of memory") {
		t.Errorf("last log line = %q, want the failure", logs)
	}
	// Crash of a failed VM is refused; a restarted VM keeps its last error.
	if err := rt.Crash("a", ""); !errors.Is(err, microvm.ErrInvalidTransition) {
		t.Errorf("Crash of a failed VM: %v, want ErrInvalidTransition", err)
	}
	vm = must(rt.Start(t.Context(), "a"))
	if vm.LastError != "out of memory" {
		t.Errorf("LastError after restart = %q, want the last failure kept", vm.LastError)
	}
	if err := rt.Crash("a", ""); err != nil {
		t.Fatal(err)
	}
	if vm := must(rt.Get(t.Context(), "a")); vm.LastError != "crashed" {
		t.Errorf("LastError for an empty reason = %q, want %q", vm.LastError, "crashed")
	}

	if err := rt.Crash("nope", "x"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Crash of an unknown VM: %v, want ErrNotFound", err)
	}
	if err := rt.Crash("a_b", "x"); !errors.Is(err, microvm.ErrInvalidID) {
		t.Errorf("Crash with a bad id: %v, want ErrInvalidID", err)
	}
	rt.Close()
	if err := rt.Crash("a", "x"); !errors.Is(err, microvm.ErrClosed) {
		t.Errorf("Crash after Close: %v, want ErrClosed", err)
	}
}

func diffSpec() microvm.Spec {
	s := validSpec()
	s.TrackDirtyPages = true
	return s
}

var diff = &microvm.SnapshotOptions{Type: microvm.SnapshotDiff}

func TestDiffSnapshots(t *testing.T) {
	ctx := context.Background()
	rt := newRuntime(t)
	running(t, rt, "plain", validSpec())
	running(t, rt, "vm", diffSpec())
	running(t, rt, "other", diffSpec())
	must(rt.Snapshot(ctx, "other", "other-full", nil))

	if _, err := rt.Snapshot(ctx, "plain", "d", diff); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("diff without track_dirty_pages: %v, want ErrInvalidArgument", err)
	}
	if _, err := rt.Snapshot(ctx, "vm", "d", diff); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("diff with no snapshot to apply to: %v, want ErrInvalidArgument", err)
	}
	full := must(rt.Snapshot(ctx, "vm", "full", nil))
	if full.Type != microvm.SnapshotFull || full.Parent != "" {
		t.Errorf("full snapshot: type %q parent %q", full.Type, full.Parent)
	}
	d1 := must(rt.Snapshot(ctx, "vm", "d1", diff))
	if d1.Type != microvm.SnapshotDiff || d1.Parent != "full" {
		t.Errorf("first diff: type %q parent %q, want diff on %q", d1.Type, d1.Parent, "full")
	}
	d2 := must(rt.Snapshot(ctx, "vm", "d2", diff))
	if d2.Parent != "d1" {
		t.Errorf("second diff: parent %q, want the newest snapshot %q", d2.Parent, "d1")
	}
	d3 := must(rt.Snapshot(ctx, "vm", "d3", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff, Parent: "full"}))
	if d3.Parent != "full" {
		t.Errorf("explicit parent: got %q", d3.Parent)
	}
	if _, err := rt.Snapshot(ctx, "vm", "d4", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff, Parent: "nope"}); !errors.Is(err, microvm.ErrSnapshotNotFound) {
		t.Errorf("unknown parent: %v, want ErrSnapshotNotFound", err)
	}
	if _, err := rt.Snapshot(ctx, "vm", "d4", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff, Parent: "other-full"}); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("parent of another VM: %v, want ErrInvalidArgument", err)
	}
	if ids := snapshotIDs(t, rt, "vm"); !slices.Equal(ids, []string{"full", "d1", "d2", "d3"}) {
		t.Errorf("Snapshots = %q, refused diffs must leave nothing", ids)
	}

	// A VM restored from a snapshot takes diffs on it by default.
	must(rt.Restore(ctx, "clone", "d2", nil))
	cd := must(rt.Snapshot(ctx, "clone", "clone-d", diff))
	if cd.Parent != "d2" || cd.VMID != "clone" {
		t.Errorf("diff of a restored VM: parent %q vm %q, want parent %q", cd.Parent, cd.VMID, "d2")
	}

	// Parents are in use while a diff applies to them.
	err := rt.DeleteSnapshot(ctx, "full", nil)
	if !errors.Is(err, microvm.ErrSnapshotInUse) || !strings.Contains(err.Error(), "d1, d3") {
		t.Errorf("DeleteSnapshot of a parent: %v, want ErrSnapshotInUse naming d1, d3", err)
	}
	if err := rt.DeleteSnapshot(ctx, "clone-d", nil); err != nil {
		t.Errorf("DeleteSnapshot of a leaf: %v", err)
	}
	// Restored VMs do not pin a snapshot here.
	if err := rt.DeleteSnapshot(ctx, "d3", nil); err != nil {
		t.Errorf("DeleteSnapshot of a leaf: %v", err)
	}
	if err := rt.DeleteSnapshot(ctx, "d1", &microvm.DeleteSnapshotOptions{Force: true}); err != nil {
		t.Errorf("forced DeleteSnapshot: %v", err)
	}
	if _, err := rt.Restore(ctx, "broken", "d2", nil); !errors.Is(err, microvm.ErrSnapshotCorrupt) {
		t.Errorf("Restore of a diff whose parent was deleted: %v, want ErrSnapshotCorrupt", err)
	}
	if _, err := rt.Get(ctx, "broken"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("a refused Restore left VM %q behind: %v", "broken", err)
	}
	if err := rt.DeleteSnapshot(ctx, "full", nil); err != nil {
		t.Errorf("DeleteSnapshot of a parent whose children are gone: %v", err)
	}
}

func snapshotIDs(t *testing.T, rt *memory.Runtime, vmID string) []string {
	t.Helper()
	var ids []string
	for _, s := range must(rt.Snapshots(t.Context(), vmID)) {
		ids = append(ids, s.ID)
	}
	return ids
}

func TestSnapshotsOfReusedID(t *testing.T) {
	rt := newRuntime(t)
	running(t, rt, "a", validSpec())
	must(rt.Snapshot(t.Context(), "a", "old", nil))
	must(rt.Destroy(t.Context(), "a"))
	running(t, rt, "a", diffSpec())
	if vm := must(rt.Get(t.Context(), "a")); len(vm.Snapshots) != 0 {
		t.Errorf("re-created VM lists snapshots %q of its predecessor", vm.Snapshots)
	}
	if ids := snapshotIDs(t, rt, "a"); !slices.Equal(ids, []string{"old"}) {
		t.Errorf("Snapshots(a) = %q, want the predecessor's %q", ids, "old")
	}
	// Nor does the new VM take a diff on its predecessor's memory.
	if _, err := rt.Snapshot(t.Context(), "a", "d", diff); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("diff on a predecessor's snapshot: %v, want ErrInvalidArgument", err)
	}
}

func TestRestoreKeepsSnapshotSpec(t *testing.T) {
	rt := newRuntime(t)
	spec := validSpec()
	spec.Labels = map[string]string{"a": "1"}
	running(t, rt, "src", spec)
	must(rt.Snapshot(t.Context(), "src", "s", nil))
	vm := must(rt.Restore(t.Context(), "r", "s", &microvm.RestoreOptions{Labels: map[string]string{}}))
	if len(vm.Spec.Labels) != 0 {
		t.Errorf("empty RestoreOptions.Labels must replace the labels, got %v", vm.Spec.Labels)
	}
	vm = must(rt.Restore(t.Context(), "r2", "s", &microvm.RestoreOptions{MemoryBackend: microvm.MemoryBackendUffd, SkipVerify: true}))
	if vm.Spec.Labels["a"] != "1" {
		t.Errorf("nil RestoreOptions.Labels must keep the labels, got %v", vm.Spec.Labels)
	}
	logs := must(rt.Logs(t.Context(), "r2", 0))
	if len(logs) != 1 || !strings.HasSuffix(logs[0], "restored from snapshot s (running)") {
		t.Errorf("restored VM's logs = %q", logs)
	}
}

func TestCanceledContext(t *testing.T) {
	rt := newRuntime(t)
	running(t, rt, "a", validSpec())
	must(rt.Snapshot(t.Context(), "a", "s", nil))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := map[string]func() error{
		"Create":         func() error { _, err := rt.Create(ctx, "b", validSpec()); return err },
		"Start":          func() error { _, err := rt.Start(ctx, "a"); return err },
		"Stop":           func() error { _, err := rt.Stop(ctx, "a", nil); return err },
		"Pause":          func() error { _, err := rt.Pause(ctx, "a"); return err },
		"Resume":         func() error { _, err := rt.Resume(ctx, "a"); return err },
		"Snapshot":       func() error { _, err := rt.Snapshot(ctx, "a", "s2", nil); return err },
		"Restore":        func() error { _, err := rt.Restore(ctx, "b", "s", nil); return err },
		"Destroy":        func() error { _, err := rt.Destroy(ctx, "a"); return err },
		"Get":            func() error { _, err := rt.Get(ctx, "a"); return err },
		"List":           func() error { _, err := rt.List(ctx); return err },
		"Snapshots":      func() error { _, err := rt.Snapshots(ctx, ""); return err },
		"DeleteSnapshot": func() error { return rt.DeleteSnapshot(ctx, "s", nil) },
		"Logs":           func() error { _, err := rt.Logs(ctx, "a", 0); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context: %v, want context.Canceled", name, err)
		}
	}
	vm := must(rt.Get(t.Context(), "a"))
	if vm.Status != microvm.StatusRunning || !slices.Equal(vm.Snapshots, []string{"s"}) {
		t.Errorf("state changed by canceled calls: %s %q", vm.Status, vm.Snapshots)
	}
	if vms := must(rt.List(t.Context())); len(vms) != 1 {
		t.Errorf("List has %d VMs, want 1", len(vms))
	}
}

func TestErrorMessagesNameTheID(t *testing.T) {
	rt := newRuntime(t)
	running(t, rt, "web-1", validSpec())
	must(rt.Snapshot(t.Context(), "web-1", "snap-1", nil))
	for _, c := range []struct {
		err  error
		want string
	}{
		{second(rt.Get(t.Context(), "web-2")), `memory: get vm "web-2": vm not found`},
		{second(rt.Create(t.Context(), "web-1", validSpec())), `create vm "web-1": vm already exists`},
		{second(rt.Resume(t.Context(), "web-1")), `cannot resume vm "web-1": it is running, not paused`},
		{second(rt.Snapshot(t.Context(), "web-1", "snap-1", nil)), `memory: snapshot vm "web-1": snapshot "snap-1": snapshot already exists`},
		{second(rt.Restore(t.Context(), "web-3", "snap-9", nil)), `memory: restore vm "web-3": snapshot "snap-9": snapshot not found`},
		{rt.DeleteSnapshot(t.Context(), "snap-9", nil), `memory: delete snapshot: snapshot "snap-9": snapshot not found`},
		{second(rt.Stop(t.Context(), "web-1", &microvm.StopOptions{Timeout: -1})), `memory: stop vm "web-1": stop options: timeout must be >= 0 (got -1ns): invalid argument`},
		{second(rt.Start(t.Context(), "web_1")), `memory: start: invalid id "web_1": may contain only letters, digits and '-' (bad character "_" at offset 3)`},
		{second(rt.Create(t.Context(), "web-4", microvm.Spec{})), `create vm "web-4": invalid spec: kernel: is required; root_drive.path: is required; vcpus: must be between 1 and 32 (got 0); memory_mib: must be at least 1 (got 0)`},
	} {
		if c.err == nil || c.err.Error() != c.want {
			t.Errorf("error = %v\nwant    %s", c.err, c.want)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestCloseTwice(t *testing.T) {
	rt := memory.New(nil)
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}
	if err := rt.Close(); !errors.Is(err, microvm.ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
}

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	h := slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug})
	rt := memory.New(&memory.Options{Logger: slog.New(h)})
	running(t, rt, "a", validSpec())
	must(rt.Snapshot(t.Context(), "a", "s", nil))
	if err := rt.DeleteSnapshot(t.Context(), "s", nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	for _, want := range []string{`msg="memory: created" vm=a status=created`, `msg="memory: started" vm=a status=running`,
		`msg="memory: snapshot s (full)"`, `msg="memory: snapshot deleted" snapshot=s vm=a`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestDestroyRacesOperations destroys VMs while other goroutines operate
// on them: every call either works or reports the VM not found.
func TestDestroyRacesOperations(t *testing.T) {
	rt := newRuntime(t)
	const n = 50
	for i := range n {
		running(t, rt, fmt.Sprint("vm-", i), validSpec())
	}
	var wg sync.WaitGroup
	for i := range n {
		id := fmt.Sprint("vm-", i)
		wg.Go(func() {
			if _, err := rt.Destroy(t.Context(), id); err != nil {
				t.Errorf("Destroy(%s): %v", id, err)
			}
		})
		wg.Go(func() {
			_, err := rt.Snapshot(t.Context(), id, "snap-"+id, nil)
			if err != nil && !errors.Is(err, microvm.ErrNotFound) {
				t.Errorf("Snapshot(%s): %v", id, err)
			}
			if _, err := rt.Pause(t.Context(), id); err != nil && !errors.Is(err, microvm.ErrNotFound) {
				t.Errorf("Pause(%s): %v", id, err)
			}
		})
		wg.Go(func() {
			if _, err := rt.List(t.Context()); err != nil {
				t.Errorf("List: %v", err)
			}
		})
	}
	wg.Wait()
	if vms := must(rt.List(t.Context())); len(vms) != 0 {
		t.Errorf("%d VMs left after destroying all", len(vms))
	}
}

func BenchmarkCreateStartDestroy(b *testing.B) {
	rt := memory.New(nil)
	ctx := context.Background()
	spec := validSpec()
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprint("vm-", i)
		if _, err := rt.Create(ctx, id, spec); err != nil {
			b.Fatal(err)
		}
		if _, err := rt.Start(ctx, id); err != nil {
			b.Fatal(err)
		}
		if _, err := rt.Destroy(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGetParallel(b *testing.B) {
	rt := memory.New(nil)
	ctx := context.Background()
	for i := range 64 {
		if _, err := rt.Create(ctx, fmt.Sprint("vm-", i), validSpec()); err != nil {
			b.Fatal(err)
		}
	}
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := rt.Get(ctx, fmt.Sprint("vm-", i%64)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// TestRelativePaths: like every runtime, Create stores the spec's paths
// resolved against the caller's working directory.
func TestRelativePaths(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	rt := memory.New(nil)
	defer rt.Close()
	spec := validSpec()
	spec.Kernel, spec.RootDrive.Path = "vmlinux", "img/rootfs.ext4"
	vm, err := rt.Create(context.Background(), "rel", spec)
	if err != nil {
		t.Fatal(err)
	}
	if vm.Spec.Kernel != filepath.Join(dir, "vmlinux") || vm.Spec.RootDrive.Path != filepath.Join(dir, "img/rootfs.ext4") {
		t.Errorf("stored paths %q, %q; want them under %s", vm.Spec.Kernel, vm.Spec.RootDrive.Path, dir)
	}
}
