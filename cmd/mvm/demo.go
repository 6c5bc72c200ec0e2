package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/memory"
)

func demoCmd(g *globals) *cobra.Command {
	var kernel, rootfs string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole lifecycle once: create, start, pause, snapshot, resume, stop, restore a clone, destroy both",
		Long: "demo runs the whole lifecycle in one process, printing each step and its duration.\n" +
			"It uses Firecracker when the host can (KVM, the firecracker binary, a kernel and a rootfs\n" +
			"from --kernel/--rootfs or MVM_KERNEL/MVM_ROOTFS), otherwise the in-memory runtime,\n" +
			"and says which and why. --runtime firecracker insists on Firecracker.",
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			forced := cmd.Flags().Changed("runtime") || os.Getenv("MVM_RUNTIME") != ""
			rt, spec, why, err := g.demoRuntime(ctx, kernel, rootfs, forced)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, why)
			err = runDemo(ctx, g, rt, spec)
			if cerr := rt.Close(); err == nil && cerr != nil {
				err = cerr
			}
			return err
		},
	}
	cmd.Flags().StringVar(&kernel, "kernel", os.Getenv("MVM_KERNEL"), "guest kernel (env MVM_KERNEL)")
	cmd.Flags().StringVar(&rootfs, "rootfs", os.Getenv("MVM_ROOTFS"), "root filesystem (env MVM_ROOTFS)")
	return cmd
}

// demoRuntime picks the runtime for the demo and says why.
func (g *globals) demoRuntime(ctx context.Context, kernel, rootfs string, forced bool) (microvm.Runtime, microvm.Spec, string, error) {
	spec := microvm.Spec{
		Kernel:    kernel,
		RootDrive: microvm.Drive{Path: rootfs},
		VCPUs:     1,
		MemoryMiB: 128,
		Labels:    map[string]string{"app": "mvm-demo"},
	}
	if g.runtime == "memory" && forced {
		spec.Kernel, spec.RootDrive.Path = "/demo/vmlinux", "/demo/rootfs.ext4"
		return memory.New(nil), spec, "runtime: memory (asked for with --runtime memory)", nil
	}
	reason := firecrackerUnavailable(ctx, g.firecrackerBin, kernel, rootfs)
	if reason != "" && !forced {
		spec.Kernel, spec.RootDrive.Path = "/demo/vmlinux", "/demo/rootfs.ext4"
		return memory.New(nil), spec, "runtime: memory, because " + reason, nil
	}
	if reason != "" && (kernel == "" || rootfs == "") {
		return nil, spec, "", fmt.Errorf("demo with --runtime firecracker: %s", reason)
	}
	rt, err := openFirecracker(ctx, g)
	if err != nil {
		return nil, spec, "", err
	}
	why := "runtime: firecracker (KVM, firecracker, kernel and rootfs found)"
	if reason != "" {
		why = "runtime: firecracker (asked for with --runtime firecracker; note: " + reason + ")"
	} else if c := checkKVM("/dev/kvm", pvmModule); c.Status == "warn" {
		why = "runtime: firecracker (firecracker, kernel and rootfs found; note: /dev/kvm is kvm-pvm, where the guest kernel stops in early boot: the steps run, the guest does not boot)"
	}
	return rt, spec, why, nil
}

// firecrackerUnavailable says why Firecracker cannot run here, or "".
func firecrackerUnavailable(ctx context.Context, bin, kernel, rootfs string) string {
	if c := checkDevice("kvm", "/dev/kvm", ""); c.Status != "ok" {
		return c.Detail
	}
	if _, c := checkBinary(ctx, "firecracker", bin, ""); c.Status != "ok" {
		return c.Detail
	}
	if kernel == "" || rootfs == "" {
		return "no guest kernel and rootfs given (set --kernel/--rootfs or MVM_KERNEL/MVM_ROOTFS)"
	}
	for _, p := range []string{kernel, rootfs} {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return p + " is not a readable file"
		}
	}
	return ""
}

// runDemo drives two VMs through the whole lifecycle.
func runDemo(ctx context.Context, g *globals, rt microvm.Runtime, spec microvm.Spec) error {
	suffix := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff)
	vm, clone, snap := "demo-"+suffix, "demo-clone-"+suffix, "demo-snap-"+suffix
	created := map[string]bool{}
	steps := []struct {
		name string
		fn   func() (string, error)
	}{
		{"create " + vm, func() (string, error) {
			v, err := rt.Create(ctx, vm, spec)
			created[vm] = err == nil
			return desc(v), err
		}},
		{"start " + vm, func() (string, error) { v, err := rt.Start(ctx, vm); return desc(v), err }},
		{"pause " + vm, func() (string, error) { v, err := rt.Pause(ctx, vm); return desc(v), err }},
		{"snapshot " + vm + " as " + snap, func() (string, error) {
			s, err := rt.Snapshot(ctx, vm, snap, nil)
			return fmt.Sprintf("%s snapshot, %s", s.Type, humanBytes(s.Size)), err
		}},
		{"resume " + vm, func() (string, error) { v, err := rt.Resume(ctx, vm); return desc(v), err }},
		{"stop " + vm, func() (string, error) { v, err := rt.Stop(ctx, vm, nil); return desc(v), err }},
		{"restore " + snap + " as " + clone, func() (string, error) {
			v, err := rt.Restore(ctx, clone, snap, nil)
			created[clone] = err == nil
			return desc(v), err
		}},
		{"destroy " + clone, func() (string, error) { v, err := rt.Destroy(ctx, clone); delete(created, clone); return desc(v), err }},
		{"destroy " + vm, func() (string, error) { v, err := rt.Destroy(ctx, vm); delete(created, vm); return desc(v), err }},
		{"delete snapshot " + snap, func() (string, error) { return "deleted", rt.DeleteSnapshot(ctx, snap, nil) }},
	}
	width := 0 // the steps' names in one column
	for _, s := range steps {
		width = max(width, len(s.name))
	}
	total := time.Now()
	for i, s := range steps {
		start := time.Now()
		detail, err := s.fn()
		d := time.Since(start)
		if err != nil {
			fmt.Fprintf(g.stdout, "%2d. %-*s FAILED after %s\n", i+1, width, s.name, round(d))
			cleanupDemo(rt, created)
			return fmt.Errorf("demo step %q: %w", s.name, err)
		}
		fmt.Fprintf(g.stdout, "%2d. %-*s %10s  %s\n", i+1, width, s.name, round(d), detail)
	}
	fmt.Fprintf(g.stdout, "demo finished in %s\n", round(time.Since(total)))
	return nil
}

func desc(v microvm.VM) string {
	if v.Backend.PID != 0 {
		return fmt.Sprintf("%s (pid %d)", v.Status, v.Backend.PID)
	}
	return string(v.Status)
}

func round(d time.Duration) time.Duration {
	switch {
	case d > time.Second:
		return d.Round(time.Millisecond)
	case d > time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// cleanupDemo destroys what a failed demo made; it runs on its own context
// so that an interrupted demo still cleans up.
func cleanupDemo(rt microvm.Runtime, created map[string]bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for id := range created {
		_, _ = rt.Destroy(ctx, id)
	}
}
