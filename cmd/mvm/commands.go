package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	microvm "github.com/mvm-dev/microvm"
)

// Defaults of `mvm create` for the fields microvm.Spec leaves required.
const (
	defaultVCPUs     = 1
	defaultMemoryMiB = 128
)

func createCmd(g *globals) *cobra.Command {
	var (
		spec   microvm.Spec
		rootfs string
		img    string
		disk   string
		rootRO bool
		drives []string
		labels []string
		vsock  uint32
		start  bool
		net    bool
		allow  []string
		deny   bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME --kernel PATH (--rootfs PATH | --image NAME [--disk-size SIZE])",
		Short: "Create a VM (configured, not booted unless --start)",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (rootfs == "") == (img == "") {
				return usagef("give exactly one of --rootfs PATH and --image NAME")
			}
			spec.RootDrive = microvm.Drive{Path: rootfs, Image: img, ReadOnly: rootRO}
			if disk != "" {
				if img == "" {
					return usagef("--disk-size needs --image (a --rootfs file is used as it is)")
				}
				mib, err := parseSizeMiB("--disk-size", disk)
				if err != nil {
					return err
				}
				spec.RootDrive.SizeBytes = int64(mib) << 20
			}
			for _, d := range drives {
				drive, err := parseDrive(d)
				if err != nil {
					return err
				}
				spec.Drives = append(spec.Drives, drive)
			}
			if len(labels) > 0 {
				spec.Labels = map[string]string{}
				for _, l := range labels {
					k, v, ok := strings.Cut(l, "=")
					if !ok || k == "" {
						return usagef("--label must be KEY=VALUE with a non-empty KEY (got %q)", l)
					}
					spec.Labels[k] = v
				}
			}
			if vsock != 0 {
				spec.Vsock = &microvm.Vsock{CID: vsock}
			}
			if (deny || len(allow) > 0) && !net {
				return usagef("--egress-allow and --egress-deny-all need --net")
			}
			if net {
				if err := g.needNet("--net"); err != nil {
					return err
				}
				egress, err := egressPolicy("--egress-allow", deny, allow)
				if err != nil {
					return err
				}
				spec.Network = append(spec.Network, microvm.NetworkInterface{Egress: egress})
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				vm, err := rt.Create(cmd.Context(), args[0], spec)
				if err != nil {
					return inFlagTerms(err, spec)
				}
				if start {
					if vm, err = rt.Start(cmd.Context(), args[0]); err != nil {
						return err
					}
				}
				return g.printVM(vm)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Kernel, "kernel", "", "guest kernel image (required)")
	f.StringVar(&rootfs, "rootfs", "", "root filesystem image file (or --image)")
	f.StringVar(&img, "image", "", "run from a private copy-on-write clone of the image `NAME` (see mvm image ls; or --rootfs)")
	f.StringVar(&disk, "disk-size", "", "with --image: grow the clone to SIZE (K, M or G suffix; whole MiB)")
	f.BoolVar(&rootRO, "rootfs-ro", false, "attach the root filesystem read-only")
	f.IntVar(&spec.VCPUs, "vcpus", defaultVCPUs, "number of vCPUs (1-32)")
	f.IntVar(&spec.MemoryMiB, "memory", defaultMemoryMiB, "guest memory in MiB")
	f.StringVar(&spec.BootArgs, "boot-args", "", "kernel command line (default: "+microvm.DefaultBootArgs+")")
	f.StringArrayVar(&drives, "drive", nil, "extra drive PATH[:ro] (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "label KEY=VALUE (repeatable)")
	f.Uint32Var(&vsock, "vsock-cid", 0, "add a vsock device with this guest CID (>= 3)")
	f.BoolVar(&spec.TrackDirtyPages, "track-dirty-pages", false, "track dirty pages (needed for diff snapshots)")
	f.BoolVar(&start, "start", false, "boot the VM after creating it")
	f.BoolVar(&net, "net", false, "give the VM a managed network (its own namespace, NAT, egress firewall; needs --egress-iface)")
	f.StringArrayVar(&allow, "egress-allow", nil, "with --net: allow egress to CIDR[,tcp|udp|icmp|any[,PORT[-PORT]]] (repeatable)")
	f.BoolVar(&deny, "egress-deny-all", false, "with --net: deny all egress except what --egress-allow lists")
	_ = cmd.MarkFlagRequired("kernel")
	return cmd
}

// parseDrive parses PATH[:ro].
func parseDrive(s string) (microvm.Drive, error) {
	if s == "" {
		return microvm.Drive{}, usagef("--drive must be PATH[:ro] (got an empty value)")
	}
	if p, ok := strings.CutSuffix(s, ":ro"); ok {
		return microvm.Drive{Path: p, ReadOnly: true}, nil
	}
	if p, ok := strings.CutSuffix(s, ":rw"); ok && p != "" {
		if _, err := os.Lstat(s); err != nil { // not a file named so
			return microvm.Drive{}, usagef("--drive must be PATH[:ro] (got %q): a drive is writable without a suffix, :ro is the only one", s)
		}
	}
	return microvm.Drive{Path: s}, nil
}

// vmCmd builds a command taking one VM name that applies op and prints the
// resulting VM.
func vmCmd(g *globals, use, short string, op func(cmd *cobra.Command, rt microvm.Runtime, id string) (microvm.VM, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				vm, err := op(cmd, rt, args[0])
				if err != nil {
					return err
				}
				return g.printVM(vm)
			})
		},
	}
}

// vmsCmd builds a command taking one or more VM names that applies op to
// each in turn. Every name is tried even when one fails (each is checked
// to be a valid id first, a usage error that tries none); the errors are
// reported together (one line, joined by "; ") and the status is non-zero
// if any failed. What op returned for the names that succeeded is printed:
// for one name, as a command of one (a table row, or a JSON object); for
// several, a table of them, or a JSON array. An interrupt (^C) stops
// before the next name; the names not tried are said so.
func vmsCmd(g *globals, use, short string, op func(cmd *cobra.Command, rt microvm.Runtime, id string) (microvm.VM, error)) *cobra.Command {
	return &cobra.Command{
		Use:   use + " NAME...",
		Short: short,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s needs NAME (got 0 arguments); see 'mvm %s --help'", cmd.Name(), cmd.Name())
			}
			if err := nonEmptyArgs(cmd, args, "NAME"); err != nil {
				return err
			}
			for _, a := range args {
				if err := microvm.ValidateID(a); err != nil {
					return usagef("%s: %w", cmd.Name(), err)
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				if len(args) == 1 {
					vm, err := op(cmd, rt, args[0])
					if err != nil {
						return err
					}
					return g.printVM(vm)
				}
				var (
					done []microvm.VM
					errs []error
				)
				for i, id := range args {
					if err := cmd.Context().Err(); err != nil {
						errs = append(errs, fmt.Errorf("%s not tried: %w", strings.Join(args[i:], ", "), err))
						break
					}
					vm, err := op(cmd, rt, id)
					if err != nil {
						errs = append(errs, err)
						continue
					}
					done = append(done, vm)
				}
				if len(done) > 0 {
					if err := g.printVMs(done); err != nil {
						errs = append(errs, err)
					}
				}
				return errors.Join(errs...)
			})
		},
	}
}

func startCmd(g *globals) *cobra.Command {
	return vmCmd(g, "start", "Boot a created, stopped or failed VM", func(cmd *cobra.Command, rt microvm.Runtime, id string) (microvm.VM, error) {
		return rt.Start(cmd.Context(), id)
	})
}

func stopCmd(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := vmsCmd(g, "stop", "Shut VMs down (Ctrl-Alt-Del, then SIGTERM, then SIGKILL)", func(cmd *cobra.Command, rt microvm.Runtime, id string) (microvm.VM, error) {
		return rt.Stop(cmd.Context(), id, &microvm.StopOptions{Timeout: timeout})
	})
	cmd.PreRunE = func(*cobra.Command, []string) error { return nonNegative("--timeout", timeout) }
	cmd.Flags().DurationVar(&timeout, "timeout", microvm.DefaultStopTimeout, "how long to wait for the guest to shut down")
	return cmd
}

func pauseCmd(g *globals) *cobra.Command {
	return vmCmd(g, "pause", "Pause a running VM", func(cmd *cobra.Command, rt microvm.Runtime, id string) (microvm.VM, error) {
		return rt.Pause(cmd.Context(), id)
	})
}

func resumeCmd(g *globals) *cobra.Command {
	return vmCmd(g, "resume", "Resume a paused VM", func(cmd *cobra.Command, rt microvm.Runtime, id string) (microvm.VM, error) {
		return rt.Resume(cmd.Context(), id)
	})
}

func rmCmd(g *globals) *cobra.Command {
	return vmsCmd(g, "rm", "Destroy VMs (their snapshots are kept)", func(cmd *cobra.Command, rt microvm.Runtime, id string) (microvm.VM, error) {
		return rt.Destroy(cmd.Context(), id)
	})
}

func renameCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rename NAME NEW-NAME",
		Short: "Rename a created, stopped or paused VM (it keeps its process and network)",
		Args:  exactArgs(2, "NAME NEW-NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				rn, ok := rt.(microvm.Renamer)
				if !ok {
					return fmt.Errorf("mvm rename: the %s runtime cannot rename VMs: %w", g.runtime, microvm.ErrUnsupported)
				}
				vm, err := rn.Rename(cmd.Context(), args[0], args[1])
				if err != nil {
					return err
				}
				return g.printVM(vm)
			})
		},
	}
}

func inspectCmd(g *globals) *cobra.Command {
	cmd := vmCmd(g, "inspect", "Show a VM in full", func(cmd *cobra.Command, rt microvm.Runtime, id string) (microvm.VM, error) {
		return rt.Get(cmd.Context(), id)
	})
	// inspect always shows everything: JSON unless -o table was asked.
	cmd.PreRun = func(cmd *cobra.Command, _ []string) {
		if !cmd.Flags().Changed("output") && !cmd.InheritedFlags().Changed("output") {
			g.output = "json"
		}
	}
	return cmd
}

func snapshotCmd(g *globals) *cobra.Command {
	var diff bool
	var parent string
	cmd := &cobra.Command{
		Use:   "snapshot NAME SNAPSHOT",
		Short: "Snapshot a running or paused VM (it ends in the state it started in)",
		Args:  exactArgs(2, "NAME SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if parent != "" && !diff {
				return usagef("--parent needs --diff (the parent of a diff snapshot)")
			}
			opts := &microvm.SnapshotOptions{Parent: parent}
			if diff {
				opts.Type = microvm.SnapshotDiff
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				s, err := rt.Snapshot(cmd.Context(), args[0], args[1], opts)
				if err != nil {
					return err
				}
				return g.printSnapshots([]microvm.Snapshot{s})
			})
		},
	}
	cmd.Flags().BoolVar(&diff, "diff", false, "take a diff snapshot (the VM must track dirty pages)")
	cmd.Flags().StringVar(&parent, "parent", "", "parent of a diff snapshot (default: the VM's newest snapshot)")
	return cmd
}

func restoreCmd(g *globals) *cobra.Command {
	var opts microvm.RestoreOptions
	var backend string
	cmd := &cobra.Command{
		Use:   "restore SNAPSHOT NAME",
		Short: "Restore a snapshot into a new VM",
		Args:  exactArgs(2, "SNAPSHOT NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.MemoryBackend = microvm.MemoryBackend(backend)
			switch opts.MemoryBackend {
			case "", microvm.MemoryBackendFile, microvm.MemoryBackendUffd:
			default:
				return usagef("--mem-backend must be file or uffd (got %q)", backend)
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				vm, err := rt.Restore(cmd.Context(), args[1], args[0], &opts)
				if err != nil {
					return err
				}
				return g.printVM(vm)
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.Paused, "paused", false, "leave the restored VM paused")
	f.StringVar(&backend, "mem-backend", "", "memory backend: file or uffd (default: the runtime's choice)")
	f.BoolVar(&opts.SkipVerify, "skip-verify", false, "do not check the snapshot's checksums first")
	return cmd
}

func lsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List VMs",
		Args:    exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				vms, err := rt.List(cmd.Context())
				if err != nil {
					return err
				}
				return g.printVMs(vms)
			})
		},
	}
}

func snapshotsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "snapshots [NAME]",
		Short: "List snapshots (of one VM, or all)",
		Args:  rangeArgs(0, 1, "[NAME]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			vmID := ""
			if len(args) == 1 {
				vmID = args[0]
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				snaps, err := rt.Snapshots(cmd.Context(), vmID)
				if err != nil {
					return err
				}
				return g.printSnapshots(snaps)
			})
		},
	}
}

func rmSnapshotCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm-snapshot SNAPSHOT",
		Short: "Delete a snapshot (refused while a VM depends on it, unless --force)",
		Args:  exactArgs(1, "SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				return rt.DeleteSnapshot(cmd.Context(), args[0], &microvm.DeleteSnapshotOptions{Force: force})
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete even while VMs depend on it")
	return cmd
}

func logsCmd(g *globals) *cobra.Command {
	var lines int
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print the tail of a VM's console and log",
		Args:  exactArgs(1, "NAME"),
		PreRunE: func(*cobra.Command, []string) error {
			return nonNegative("--lines", lines)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				out, err := rt.Logs(cmd.Context(), args[0], lines)
				if err != nil {
					return err
				}
				if g.output == "json" {
					return writeJSON(g.stdout, out)
				}
				for _, l := range out {
					fmt.Fprintln(g.stdout, l)
				}
				return nil
			})
		},
	}
	cmd.Flags().IntVarP(&lines, "lines", "n", 100, "number of lines (0 = all that is kept)")
	return cmd
}

func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			if n == 0 {
				return usagef("%s takes no arguments (got %d)", cmd.Name(), len(args))
			}
			return usagef("%s needs %s (got %d argument(s)); see 'mvm %s --help'", cmd.Name(), names, len(args), cmd.Name())
		}
		return nonEmptyArgs(cmd, args, names)
	}
}

func rangeArgs(lo, hi int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return usagef("usage: mvm %s %s (got %d argument(s))", cmd.Name(), names, len(args))
		}
		return nonEmptyArgs(cmd, args, names)
	}
}
