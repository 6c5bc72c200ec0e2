package firecracker_test

// Real guests for a few seconds: the part of the KVM suite that runs on any
// host where /dev/kvm opens, kvm-pvm hosts included (they stop an
// unmodified guest kernel within tens of seconds of boot, see
// guesttest.RequireKVM). Each real firecracker starts vmlinux-6.1 with the
// agent image under KVM, pauses it, snapshots it (full and diff) and
// restores the snapshots with both memory backends while the guest runs;
// SIGKILL turns the VM failed. Firecracker itself, asked through its own
// API, is the referee for each state.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/guesttest"
	"golang.org/x/sys/unix"
)

// uffdWorks reports whether firecracker version v restores with the Uffd
// backend on this host: v1.0 has no mem_backend, and v1.7's userfaultfd
// library fails to register guest memory on Linux 6.6 and later
// ("Unrecognized ioctl flags"; bytecodealliance/userfaultfd-rs#61).
func uffdWorks(v string) bool {
	switch v {
	case "v1.0.0":
		return false
	case "v1.7.0":
		var u unix.Utsname
		if unix.Uname(&u) != nil {
			return false
		}
		var major, minor int
		fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
		return major < 6 || major == 6 && minor < 6
	}
	return true
}

// kernelRelease is the host's uname -r.
func kernelRelease(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

// assertGone fails unless VM id has no process, directory or record left
// (other VMs of the state dir may still run).
func assertGone(t *testing.T, state, id string) {
	t.Helper()
	dir := filepath.Join(state, "vms", id)
	deadline := time.Now().Add(5 * time.Second)
	for len(procsUnder(dir)) > 0 {
		if time.Now().After(deadline) {
			t.Errorf("processes left under %s: %v", dir, procsUnder(dir))
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, p := range []string{dir, filepath.Join(state, "registry", "vm", id+".json")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
}

// instanceState is firecracker's own word for VM id's state (GET /).
func instanceState(t *testing.T, rt microvm.Runtime, id string) string {
	t.Helper()
	vm, err := rt.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	var info struct {
		State string `json:"state"`
	}
	apiGet(t, vm.Backend.APISocket, "/", &info)
	return info.State
}

// TestKVMGuestSnapshots runs a real guest under each real firecracker:
// Start, Pause, full and diff Snapshot, Restore of each with the File and
// the Uffd backends (each restored guest running, by firecracker's own
// account, its process and files gone after Destroy), Resume, and SIGKILL.
func TestKVMGuestSnapshots(t *testing.T) {
	guesttest.RequireKVMDevice(t)
	kernel := guesttest.Kernel(t)
	bins := guesttest.Firecrackers(t)
	rootfs := guesttest.Image(t)
	uffd := uffdBin(t)
	for _, v := range guesttest.Versions(bins) {
		t.Run(v, func(t *testing.T) {
			ctx := kvmCtx(t)
			state := t.TempDir()
			rt := open(t, state, bins[v], func(c *firecracker.Config) {
				c.UffdBin = uffd
				// A vCPU deep in kvm-pvm's instruction emulator can take
				// seconds to leave KVM_RUN for a pause (seen once with v1.0).
				c.APITimeout = 30 * time.Second
			})
			t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
			spec := guestSpec(kernel, rootfs)
			spec.TrackDirtyPages = true
			if _, err := rt.Create(ctx, "g", spec); err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			if vm, err := rt.Start(ctx, "g"); err != nil || vm.Status != microvm.StatusRunning {
				t.Fatalf("Start = %s, %v", vm.Status, err)
			}
			t.Logf("Start (InstanceStart answered): %s", time.Since(t0).Round(time.Millisecond))
			if s := instanceState(t, rt, "g"); s != "Running" {
				t.Fatalf("firecracker says %q after Start, want Running", s)
			}
			if vm, err := rt.Pause(ctx, "g"); err != nil || vm.Status != microvm.StatusPaused {
				t.Fatalf("Pause = %s, %v", vm.Status, err)
			}
			if s := instanceState(t, rt, "g"); s != "Paused" {
				t.Fatalf("firecracker says %q after Pause, want Paused", s)
			}
			t0 = time.Now()
			if _, err := rt.Snapshot(ctx, "g", "g-full", nil); err != nil {
				t.Fatalf("full Snapshot: %v", err)
			}
			t.Logf("full Snapshot of %d MiB: %s", spec.MemoryMiB, time.Since(t0).Round(time.Millisecond))
			if s := instanceState(t, rt, "g"); s != "Paused" {
				t.Errorf("firecracker says %q after a Snapshot of a paused VM, want Paused", s)
			}
			if vm, err := rt.Resume(ctx, "g"); err != nil || vm.Status != microvm.StatusRunning {
				t.Fatalf("Resume = %s, %v", vm.Status, err)
			}
			if s := instanceState(t, rt, "g"); s != "Running" {
				t.Fatalf("firecracker says %q after Resume, want Running", s)
			}
			t0 = time.Now()
			snap, err := rt.Snapshot(ctx, "g", "g-diff", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff})
			if err != nil {
				t.Fatalf("diff Snapshot of a running guest: %v", err)
			}
			t.Logf("diff Snapshot of a running guest: %s", time.Since(t0).Round(time.Millisecond))
			if snap.Parent != "g-full" {
				t.Errorf("diff snapshot parent %q, want g-full", snap.Parent)
			}
			if s := instanceState(t, rt, "g"); s != "Running" {
				t.Errorf("firecracker says %q after a Snapshot of a running VM, want Running (the runtime resumes it)", s)
			}
			for _, from := range []string{"g-full", "g-diff"} {
				for _, backend := range []microvm.MemoryBackend{microvm.MemoryBackendFile, microvm.MemoryBackendUffd} {
					id := from + "-" + string(backend)
					t0 = time.Now()
					vm, err := rt.Restore(ctx, id, from, &microvm.RestoreOptions{MemoryBackend: backend})
					if backend == microvm.MemoryBackendUffd && !uffdWorks(v) {
						// v1.0 has no mem_backend; v1.7's userfaultfd library
						// rejects what Linux >= 6.6 reports at registration.
						if !errors.Is(err, microvm.ErrUnsupported) {
							t.Errorf("Restore(%s) with uffd on firecracker %s, Linux %s = %v; want ErrUnsupported", id, v, kernelRelease(t), err)
						} else {
							t.Logf("uffd restore on firecracker %s, as expected: %v", v, err)
						}
						assertGone(t, state, id)
						continue
					}
					if err != nil {
						t.Fatalf("Restore(%s from %s, %s): %v", id, from, backend, err)
					}
					t.Logf("Restore %s with %s: %s", from, backend, time.Since(t0).Round(time.Millisecond))
					if vm.Status != microvm.StatusRunning || vm.RestoredFrom != from {
						t.Errorf("%s: %s from %q", id, vm.Status, vm.RestoredFrom)
					}
					if s := instanceState(t, rt, id); s != "Running" {
						t.Errorf("firecracker says %q for restored %s, want Running", s, id)
					}
					if _, err := rt.Destroy(ctx, id); err != nil {
						t.Errorf("Destroy(%s): %v", id, err)
					}
					assertGone(t, state, id)
				}
			}
			kill(t, rt, "g")
			vm := waitStatus(t, rt, "g", microvm.StatusFailed)
			if !strings.Contains(vm.LastError, "SIGKILL") || vm.Backend.PID != 0 {
				t.Errorf("killed guest: LastError %q, PID %d; want SIGKILL named and no process", vm.LastError, vm.Backend.PID)
			}
			if _, err := rt.Destroy(ctx, "g"); err != nil {
				t.Errorf("Destroy(g): %v", err)
			}
			assertClean(t, state, "g")
		})
	}
}

// BenchmarkKVMSnapshotRestore measures, on real firecracker with KVM (a
// guest a few seconds into its boot, which a kvm-pvm host allows too),
// a full Snapshot of a paused guest and batches of 10 clones restored from
// it at once with each memory backend, for 128 MiB and 1 GiB guests.
// It runs the newest firecracker of guesttest.Firecrackers (shared/, or
// MVM_FIRECRACKER_BIN).
//
//	go test -run '^$' -bench KVMSnapshotRestore -benchtime 5x ./firecracker/
func BenchmarkKVMSnapshotRestore(b *testing.B) {
	guesttest.RequireKVMDevice(b)
	kernel := guesttest.Kernel(b)
	bins := guesttest.Firecrackers(b)
	vs := guesttest.Versions(bins)
	v := vs[len(vs)-1]
	bin := bins[v]
	rootfs := guesttest.Image(b)
	uffd := uffdBin(b)
	const clones = 10
	for _, mem := range []int{128, 1024} {
		b.Run(fmt.Sprintf("mem=%dMiB", mem), func(b *testing.B) {
			ctx := context.Background()
			rt := open(b, benchStateDir(b), bin, func(c *firecracker.Config) {
				c.UffdBin = uffd
				c.APITimeout = 30 * time.Second
			})
			defer rt.Close()
			defer destroyAll(b, rt)
			spec := guestSpec(kernel, rootfs)
			spec.MemoryMiB = mem
			if _, err := rt.Create(ctx, "seed", spec); err != nil {
				b.Fatal(err)
			}
			if _, err := rt.Start(ctx, "seed"); err != nil {
				b.Fatal(err)
			}
			if _, err := rt.Pause(ctx, "seed"); err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			if _, err := rt.Snapshot(ctx, "seed", "seed-snap", nil); err != nil {
				b.Fatal(err)
			}
			snapTook := time.Since(t0)
			for _, backend := range []microvm.MemoryBackend{microvm.MemoryBackendFile, microvm.MemoryBackendUffd} {
				b.Run(fmt.Sprintf("backend=%s/clones=%d", backend, clones), func(b *testing.B) {
					if backend == microvm.MemoryBackendUffd && !uffdWorks(v) {
						b.Skipf("firecracker %s cannot restore with uffd here", v)
					}
					batch := restoreBatches(b, rt, "seed-snap", clones, backend)
					b.ReportMetric(float64(snapTook.Microseconds())/1000, "ms/snapshot")
					b.ReportMetric(float64(batch.Microseconds())/1000/float64(b.N), "ms/batch")
					b.ReportMetric(float64(batch.Microseconds())/1000/float64(b.N*clones), "ms/clone")
					b.ReportMetric(float64(b.N*clones)/batch.Seconds(), "clones/s")
				})
			}
			rt.DeleteSnapshot(ctx, "seed-snap", &microvm.DeleteSnapshotOptions{Force: true})
		})
	}
}

// TestKVMImageDiskSnapshot runs wherever /dev/kvm opens: a real guest
// whose root drive is a per-VM clone of a stored image (given to
// firecracker by a name relative to the VM directory) is started, paused
// and snapshotted under each real firecracker that restores snapshots; two
// VMs restored from it run (firecracker's GET /) on disks of their own,
// each a copy of the snapshot's, with the image's content.
func TestKVMImageDiskSnapshot(t *testing.T) {
	guesttest.RequireKVMDevice(t)
	kernel := guesttest.Kernel(t)
	bins := guesttest.Firecrackers(t)
	for _, v := range guesttest.Versions(bins) {
		t.Run(v, func(t *testing.T) {
			ctx := kvmCtx(t)
			state := t.TempDir()
			rt := open(t, state, bins[v], func(c *firecracker.Config) { c.APITimeout = 30 * time.Second })
			t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
			buildImage(t, state, "base", 16)
			spec := guestSpec(kernel, "")
			spec.RootDrive = microvm.Drive{Image: "base"}
			src, err := rt.Create(ctx, "src", spec)
			if err != nil {
				t.Fatalf("Create from an image: %v", err)
			}
			if _, err := rt.Start(ctx, "src"); err != nil {
				t.Fatalf("Start: %v", err)
			}
			if _, err := rt.Pause(ctx, "src"); err != nil {
				t.Fatalf("Pause: %v", err)
			}
			if _, err := rt.Snapshot(ctx, "src", "snap", nil); err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			disks := map[uint64]string{}
			ino, _ := inode(t, src.Spec.RootDrive.Path)
			disks[ino] = "src"
			for _, id := range []string{"r1", "r2"} {
				vm, err := rt.Restore(ctx, id, "snap", &microvm.RestoreOptions{MemoryBackend: microvm.MemoryBackendFile})
				if err != nil {
					t.Fatalf("Restore(%s): %v", id, err)
				}
				if s := instanceState(t, rt, id); s != "Running" {
					t.Errorf("firecracker says %q for %s, want Running", s, id)
				}
				ino, _ := inode(t, vm.Spec.RootDrive.Path)
				if other, dup := disks[ino]; dup {
					t.Errorf("%s shares its disk %s with %s", id, vm.Spec.RootDrive.Path, other)
				}
				disks[ino] = id
				if !strings.HasPrefix(vm.Spec.RootDrive.Path, vm.Backend.Dir+"/") {
					t.Errorf("%s: disk %s is not in its directory %s", id, vm.Spec.RootDrive.Path, vm.Backend.Dir)
				}
			}
		})
	}
}
