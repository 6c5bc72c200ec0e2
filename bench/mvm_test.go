package bench

import (
	"context"
	"fmt"
	"os"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// mvmLauncher drives the stand-in through mvm's runtime: Create (spawn,
// wait for the API, PUT /logger, /metrics, /machine-config, /boot-source,
// /drives/rootfs, with a durable record and a per-VM lock) and, when
// booting, Start (PUT /actions InstanceStart, record updated). Teardown is
// Destroy (SIGKILL, exit confirmed through the pidfd, directory and record
// removed).
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
	})
	if err != nil {
		os.RemoveAll(dir)
		b.Fatal(err)
	}
	return &mvmLauncher{rt: rt, dir: dir, spec: microvm.Spec{
		Kernel:    e.kernel,
		BootArgs:  bootArgs,
		RootDrive: microvm.Drive{Path: e.rootfs},
		VCPUs:     benchVCPUs,
		MemoryMiB: benchMemoryMiB,
	}}
}

func (m *mvmLauncher) launch(ctx context.Context, id string, boot bool) (func() error, error) {
	if _, err := m.rt.Create(ctx, id, m.spec); err != nil {
		return nil, fmt.Errorf("mvm %s: create: %w", id, err)
	}
	teardown := func() error {
		if _, err := m.rt.Destroy(context.Background(), id); err != nil {
			return fmt.Errorf("mvm %s: destroy: %w", id, err)
		}
		return nil
	}
	if boot {
		if _, err := m.rt.Start(ctx, id); err != nil {
			return teardown, fmt.Errorf("mvm %s: start: %w", id, err)
		}
	}
	return teardown, nil
}

func (m *mvmLauncher) close() error {
	err := m.rt.Close()
	if rerr := os.RemoveAll(m.dir); err == nil {
		err = rerr
	}
	return err
}
