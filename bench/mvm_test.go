package bench

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// mvmLauncher drives firecracker through mvm's runtime, opened once per
// sub-benchmark: Create (spawn, wait for the API, configure, with a
// durable record and a per-VM lock) and, when booting, Start. Teardown is
// Destroy (SIGKILL, exit confirmed through the pidfd, directory and record
// removed) plus DeleteSnapshot of what the VM's snapshots left.
type mvmLauncher struct {
	rt   *firecracker.Runtime
	spec microvm.Spec
	dir  string
}

func openMVM(b *testing.B, e *benchEnv) launcher {
	dir, err := os.MkdirTemp(e.scratch, "mvm")
	if err != nil {
		b.Fatal(err)
	}
	rt, err := firecracker.Open(context.Background(), firecracker.Config{
		StateDir:       dir,
		FirecrackerBin: e.bin,
		ReadyTimeout:   readyTimeout,
		APITimeout:     apiTimeout,
		Env:            os.Environ(), // as the other implementations (the stand-in's settings)
	})
	if err != nil {
		os.RemoveAll(dir)
		b.Fatal(err)
	}
	return &mvmLauncher{rt: rt, dir: dir, spec: microvm.Spec{
		Kernel:    e.kernel,
		BootArgs:  bootArgs,
		RootDrive: microvm.Drive{Path: e.rootfs, ReadOnly: true}, // shared by the live VMs of a run
		VCPUs:     benchVCPUs,
		MemoryMiB: benchMemoryMiB,
	}}
}

type mvmVM struct {
	m     *mvmLauncher
	id    string
	snaps []string // deleted by destroy
}

func (m *mvmLauncher) create(ctx context.Context, id string, boot bool) (benchVM, error) {
	if _, err := m.rt.Create(ctx, id, m.spec); err != nil {
		return nil, fmt.Errorf("mvm %s: create: %w", id, err)
	}
	vm := &mvmVM{m: m, id: id}
	if boot {
		return vm, vm.start(ctx)
	}
	return vm, nil
}

func (m *mvmLauncher) restore(ctx context.Context, id string, snap snapshotRef) (benchVM, error) {
	if _, err := m.rt.Restore(ctx, id, snap.id, nil); err != nil {
		return nil, fmt.Errorf("mvm %s: restore: %w", id, err)
	}
	// The restored VM's teardown deletes the snapshot it came from.
	return &mvmVM{m: m, id: id, snaps: []string{snap.id}}, nil
}

func (m *mvmLauncher) close() error {
	err := m.rt.Close()
	if rerr := os.RemoveAll(m.dir); err == nil {
		err = rerr
	}
	return err
}

func (v *mvmVM) wrap(op string, _ microvm.VM, err error) error {
	if err != nil {
		return fmt.Errorf("mvm %s: %s: %w", v.id, op, err)
	}
	return nil
}

func (v *mvmVM) start(ctx context.Context) error {
	vm, err := v.m.rt.Start(ctx, v.id)
	return v.wrap("start", vm, err)
}

func (v *mvmVM) stop(ctx context.Context) error {
	vm, err := v.m.rt.Stop(ctx, v.id, &microvm.StopOptions{Timeout: 10 * time.Second})
	return v.wrap("stop", vm, err)
}

func (v *mvmVM) pause(ctx context.Context) error {
	vm, err := v.m.rt.Pause(ctx, v.id)
	return v.wrap("pause", vm, err)
}

func (v *mvmVM) resume(ctx context.Context) error {
	vm, err := v.m.rt.Resume(ctx, v.id)
	return v.wrap("resume", vm, err)
}

func (v *mvmVM) snapshot(ctx context.Context, _ string) (snapshotRef, error) {
	sid := vmID("snap")
	if _, err := v.m.rt.Snapshot(ctx, v.id, sid, nil); err != nil {
		return snapshotRef{}, fmt.Errorf("mvm %s: snapshot: %w", v.id, err)
	}
	// The snapshot stays in the store (removed with the state directory)
	// for a restore to use.
	return snapshotRef{id: sid}, nil
}

func (v *mvmVM) destroy() error {
	ctx := context.Background()
	if _, err := v.m.rt.Destroy(ctx, v.id); err != nil {
		return fmt.Errorf("mvm %s: destroy: %w", v.id, err)
	}
	for _, s := range v.snaps {
		if err := v.m.rt.DeleteSnapshot(ctx, s, nil); err != nil {
			return fmt.Errorf("mvm %s: delete snapshot %s: %w", v.id, s, err)
		}
	}
	return nil
}

// pid returns the VM's firecracker pid.
func (v *mvmVM) pid(ctx context.Context) (int, error) {
	vm, err := v.m.rt.Get(ctx, v.id)
	if err != nil {
		return 0, err
	}
	return vm.Backend.PID, nil
}

// noticeExit waits until the runtime shows the VM without a process (its
// crash watcher recorded the exit).
func (v *mvmVM) noticeExit(ctx context.Context) error {
	for {
		vm, err := v.m.rt.Get(ctx, v.id)
		if err != nil {
			return err
		}
		if vm.Backend.PID == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("mvm %s: crash not noticed: %w", v.id, ctx.Err())
		case <-time.After(200 * time.Microsecond):
		}
	}
}
