package conformance_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/conformance"
	"github.com/mvm-dev/microvm/memory"
)

func spec() microvm.Spec {
	return microvm.Spec{Kernel: "/vmlinux", RootDrive: microvm.Drive{Path: "/rootfs.ext4"}, VCPUs: 1, MemoryMiB: 128}
}

func harness(newRT func() microvm.Runtime) conformance.Harness {
	return conformance.Harness{
		New:  func(t *testing.T) microvm.Runtime { return newRT() },
		Spec: func(t *testing.T) microvm.Spec { return spec() },
		Crash: func(t *testing.T, rt microvm.Runtime, id string) {
			var m *memory.Runtime
			switch rt := rt.(type) {
			case *memory.Runtime:
				m = rt
			case *mutant:
				if rt.noBoot() {
					rt.fail(id, "killed by test")
					return
				}
				m = rt.Runtime
			}
			if err := m.Crash(id, "killed by test"); err != nil {
				t.Fatalf("Crash(%q): %v", id, err)
			}
		},
		Shutdown: func(t *testing.T, rt microvm.Runtime, id string) {
			m, ok := rt.(*memory.Runtime)
			if !ok {
				m = rt.(*mutant).Runtime
			}
			if err := m.Shutdown(id); err != nil {
				t.Fatalf("Shutdown(%q): %v", id, err)
			}
		},
		Parallelism: 4,
	}
}

// TestMemoryWithoutOptionalHooks runs the suite with only New and Spec, as
// a runtime without crash or reopen support would.
func TestMemoryWithoutOptionalHooks(t *testing.T) {
	conformance.Run(t, conformance.Harness{
		New:  func(t *testing.T) microvm.Runtime { return memory.New(nil) },
		Spec: func(t *testing.T) microvm.Spec { return spec() },
	})
}

// mutants are runtimes that break one rule each, and the subtest that
// must catch it.
var mutants = map[string]string{
	"pause-twice":              "Transitions/paused/pause",
	"untyped-refusal":          "Transitions/running/start",
	"snapshot-from-created":    "Transitions/created/snapshot",
	"destroyed-status-stopped": "Destroy/ReturnsLastView",
	"aliased-spec":             "Create/CopiesInAndOut",
	"invalid-spec-created":     "Create/InvalidSpec",
	"unsorted-list":            "List/SortedByID",
	"unvalidated-logs-id":      "IDs/Invalid",
	"negative-timeout-ok":      "Options/NegativeStopTimeout",
	"newest-first-snapshots":   "Snapshots/OldestFirst",
	"snapshot-leaves-paused":   "Snapshots/RunningAndPaused",
	"restore-ignores-paused":   "Restore/Paused",
	"logs-ignores-lines":       "Logs/Lines",
	"crash-without-reason":     "Crash/Running",
	"racy-create":              "Concurrency/CreateRace",
	"close-noop":               "Close",
	// Backends that cannot boot (Harness.NoBoot).
	"noboot-untyped-start": "NoBoot",
	"noboot-no-reason":     "NoBoot",
	"noboot-boots":         "NoBoot",
}

// TestNoBoot runs the suite in its NoBoot form against a memory runtime
// whose Start of a created VM fails as a KVM-less Firecracker's does.
func TestNoBoot(t *testing.T) {
	h := harness(func() microvm.Runtime { return newMutant("noboot") })
	h.NoBoot = true
	conformance.Run(t, h)
}

// TestSuiteCatchesMutants runs the suite against each mutant in a child
// process and wants the named subtest to fail.
func TestSuiteCatchesMutants(t *testing.T) {
	if os.Getenv("CONFORMANCE_MUTANT") != "" {
		t.Skip("in a mutant child process")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range slices.Sorted(maps.Keys(mutants)) {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(exe, "-test.run=^TestMutant$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), "CONFORMANCE_MUTANT="+kind)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed mutant %q:\n%s", kind, lastLines(out, 20))
			}
			want := "--- FAIL: TestMutant/" + mutants[kind]
			if !strings.Contains(string(out), want) {
				t.Errorf("mutant %q: output lacks %q:\n%s", kind, want, lastLines(out, 40))
			}
			if strings.Contains(string(out), "panic:") {
				t.Errorf("mutant %q made the suite panic:\n%s", kind, lastLines(out, 40))
			}
		})
	}
}

func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestMutant is the child side of TestSuiteCatchesMutants.
func TestMutant(t *testing.T) {
	kind := os.Getenv("CONFORMANCE_MUTANT")
	if kind == "" {
		t.Skip("run by TestSuiteCatchesMutants")
	}
	h := harness(func() microvm.Runtime { return newMutant(kind) })
	h.NoBoot = strings.HasPrefix(kind, "noboot")
	conformance.Run(t, h)
}

func newMutant(kind string) *mutant {
	return &mutant{Runtime: memory.New(nil), kind: kind, specs: map[string]microvm.Spec{}, lastErr: map[string]string{}}
}

// mutant wraps the memory runtime and breaks the rule its kind names.
type mutant struct {
	*memory.Runtime
	kind string

	mu      sync.Mutex
	specs   map[string]microvm.Spec // aliased-spec: the caller's own spec
	lastErr map[string]string       // noboot*: LastError of VMs whose boot failed
}

// noBoot reports whether m plays a backend that cannot boot: Start of a
// created VM fails with a BackendError, recorded in LastError.
func (m *mutant) noBoot() bool {
	return strings.HasPrefix(m.kind, "noboot") && m.kind != "noboot-boots"
}

// fail records why VM id failed to boot or lost its process (noBoot).
func (m *mutant) fail(id, why string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kind != "noboot-no-reason" {
		m.lastErr[id] = why
	}
}

func (m *mutant) withLastError(vm microvm.VM) microvm.VM {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.lastErr[vm.ID]; ok {
		vm.LastError = e
	}
	return vm
}

func (m *mutant) Create(ctx context.Context, id string, spec microvm.Spec) (microvm.VM, error) {
	switch m.kind {
	case "aliased-spec":
		vm, err := m.Runtime.Create(ctx, id, spec)
		if err == nil {
			m.mu.Lock()
			m.specs[id] = spec
			m.mu.Unlock()
		}
		return vm, err
	case "invalid-spec-created":
		if err := spec.WithDefaults().Validate(); err != nil {
			m.Runtime.Create(ctx, id, validSpecLike(spec))
			return microvm.VM{}, err
		}
	case "racy-create":
		vm, err := m.Runtime.Create(ctx, id, spec)
		if errors.Is(err, microvm.ErrAlreadyExists) {
			return m.Runtime.Get(ctx, id) // "overwrites" silently
		}
		return vm, err
	}
	return m.Runtime.Create(ctx, id, spec)
}

func validSpecLike(s microvm.Spec) microvm.Spec { return spec() }

func (m *mutant) Get(ctx context.Context, id string) (microvm.VM, error) {
	vm, err := m.Runtime.Get(ctx, id)
	if err != nil {
		return vm, err
	}
	switch m.kind {
	case "aliased-spec":
		m.mu.Lock()
		if s, ok := m.specs[id]; ok {
			d := s.WithDefaults()
			d.Labels, d.Drives = s.Labels, s.Drives // share the caller's maps and slices
			vm.Spec = d
		}
		m.mu.Unlock()
	case "crash-without-reason":
		vm.LastError = ""
	}
	return m.withLastError(vm), nil
}

func (m *mutant) Start(ctx context.Context, id string) (microvm.VM, error) {
	if m.noBoot() {
		if vm, err := m.Runtime.Get(ctx, id); err == nil && vm.Status == microvm.StatusCreated {
			if m.kind == "noboot-untyped-start" {
				return microvm.VM{}, fmt.Errorf("start %q: boot failed", id)
			}
			be := &microvm.BackendError{Op: "boot", Method: "PUT", Path: "/actions", StatusCode: 400, Message: "Start microvm error: Kvm error"}
			m.fail(id, be.Error())
			return microvm.VM{}, be
		}
	}
	vm, err := m.Runtime.Start(ctx, id)
	if m.kind == "untyped-refusal" && errors.Is(err, microvm.ErrInvalidTransition) {
		return vm, fmt.Errorf("cannot start %q: %w", id, microvm.ErrInvalidTransition)
	}
	return vm, err
}

func (m *mutant) Stop(ctx context.Context, id string, opts *microvm.StopOptions) (microvm.VM, error) {
	if m.kind == "negative-timeout-ok" && opts != nil && opts.Timeout < 0 {
		opts = nil
	}
	return m.Runtime.Stop(ctx, id, opts)
}

func (m *mutant) Pause(ctx context.Context, id string) (microvm.VM, error) {
	if m.kind == "pause-twice" {
		if vm, err := m.Runtime.Get(ctx, id); err == nil && vm.Status == microvm.StatusPaused {
			return vm, nil
		}
	}
	return m.Runtime.Pause(ctx, id)
}

func (m *mutant) Snapshot(ctx context.Context, id, snapID string, opts *microvm.SnapshotOptions) (microvm.Snapshot, error) {
	switch m.kind {
	case "snapshot-from-created":
		if vm, err := m.Runtime.Get(ctx, id); err == nil && vm.Status == microvm.StatusCreated {
			return microvm.Snapshot{ID: snapID, VMID: id}, nil
		}
	case "snapshot-leaves-paused":
		s, err := m.Runtime.Snapshot(ctx, id, snapID, opts)
		if err == nil {
			m.Runtime.Pause(ctx, id)
		}
		return s, err
	}
	return m.Runtime.Snapshot(ctx, id, snapID, opts)
}

func (m *mutant) Restore(ctx context.Context, newID, snapID string, opts *microvm.RestoreOptions) (microvm.VM, error) {
	if m.kind == "restore-ignores-paused" && opts != nil {
		o := *opts
		o.Paused = false
		opts = &o
	}
	return m.Runtime.Restore(ctx, newID, snapID, opts)
}

func (m *mutant) Destroy(ctx context.Context, id string) (microvm.VM, error) {
	vm, err := m.Runtime.Destroy(ctx, id)
	if err == nil {
		m.mu.Lock()
		delete(m.lastErr, id)
		m.mu.Unlock()
	}
	if m.kind == "destroyed-status-stopped" && err == nil {
		vm.Status = microvm.StatusStopped
	}
	return vm, err
}

func (m *mutant) List(ctx context.Context) ([]microvm.VM, error) {
	vms, err := m.Runtime.List(ctx)
	if m.kind == "unsorted-list" {
		slices.Reverse(vms)
	}
	return vms, err
}

func (m *mutant) Snapshots(ctx context.Context, vmID string) ([]microvm.Snapshot, error) {
	s, err := m.Runtime.Snapshots(ctx, vmID)
	if m.kind == "newest-first-snapshots" {
		slices.Reverse(s)
	}
	return s, err
}

func (m *mutant) Logs(ctx context.Context, id string, lines int) ([]string, error) {
	switch m.kind {
	case "unvalidated-logs-id":
		if err := microvm.ValidateID(id); err != nil {
			return nil, fmt.Errorf("logs of %q: %w", id, microvm.ErrNotFound)
		}
	case "logs-ignores-lines":
		lines = 0
	}
	return m.Runtime.Logs(ctx, id, lines)
}

func (m *mutant) Close() error {
	if m.kind == "close-noop" {
		return nil
	}
	return m.Runtime.Close()
}
