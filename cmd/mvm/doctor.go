package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/nftables"
	"github.com/spf13/cobra"
)

// check is one line of `mvm doctor`.
type check struct {
	Name   string `json:"check"`
	Status string `json:"status"` // ok, warn or fail
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

func doctorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run Firecracker microVMs",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := runChecks(cmd.Context(), g.firecrackerBin, g.jail.bin)
			if g.output == "json" {
				if err := writeJSON(g.stdout, checks); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				for _, c := range checks {
					line := fmt.Sprintf("%s\t%s\t%s", strings.ToUpper(c.Status), c.Name, c.Detail)
					if c.Hint != "" {
						line += "\t(fix: " + c.Hint + ")"
					}
					fmt.Fprintln(tw, line)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			failed := 0
			for _, c := range checks {
				if c.Status == "fail" {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("doctor: %d of %d checks failed", failed, len(checks))
			}
			return nil
		},
	}
}

// runChecks checks the host for the firecracker binary fcBin and the
// jailer jailerBin ("": found beside firecracker or on PATH, and only
// needed for jailed VMs; given: it must be there and of firecracker's
// release).
func runChecks(ctx context.Context, fcBin, jailerBin string) []check {
	fcPath, fcCheck := checkBinary(ctx, "firecracker", fcBin, "")
	_, jailerCheck := checkBinary(ctx, "jailer", jailerBin, fcPath)
	if jailerBin == "" {
		jailerCheck.Status = softFail(jailerCheck.Status) // only needed for jailed VMs
	} else if fcCheck.Status == "ok" && jailerCheck.Status == "ok" {
		jailerCheck = checkPair(fcCheck, jailerCheck)
	}
	return []check{
		checkKVM("/dev/kvm", pvmModule),
		fcCheck,
		jailerCheck,
		checkDevice("tun", "/dev/net/tun", "modprobe tun"),
		checkUserfaultfd(),
		checkCgroup2(),
		checkNftables(),
		checkForwarding(),
	}
}

// pvmModule exists when /dev/kvm is served by kvm-pvm.
const pvmModule = "/sys/module/kvm_pvm"

// checkKVM checks that dev opens read-write, and warns when it is served
// by kvm-pvm (pvmMarker exists): firecracker starts, but an unmodified
// guest kernel stops in early boot and the VM fails seconds later.
func checkKVM(dev, pvmMarker string) check {
	c := checkDevice("kvm", dev, "enable virtualization and load kvm_intel or kvm_amd; give this user rw access to /dev/kvm (group kvm)")
	if _, err := os.Stat(pvmMarker); c.Status == "ok" && err == nil {
		c.Status = "warn"
		c.Detail = dev + " is usable but served by kvm-pvm (software nested virtualization): an unmodified guest kernel stops in early boot and its VM fails (KVM_EXIT_INTERNAL_ERROR in mvm logs)"
		c.Hint = "run VMs on a host with hardware KVM (kvm_intel or kvm_amd), or a guest kernel built for PVM"
	}
	return c
}

// checkPair refuses a jailer of another release than firecracker's (the
// runtime refuses to open with one).
func checkPair(fc, jailer check) check {
	if fv, jv, differ := otherRelease(fc, jailer); differ {
		jailer.Status = "fail"
		jailer.Detail += ": release " + jv + ", but firecracker is " + fv
		jailer.Hint = "use the jailer of firecracker's release (they ship together)"
	}
	return jailer
}

// otherRelease says whether the binary checks fc and jailer both name a
// release and the two differ, and which they are.
func otherRelease(fc, jailer check) (fv, jv string, differ bool) {
	fv, jv = releaseOf(fc.Detail), releaseOf(jailer.Detail)
	return fv, jv, fv != "" && jv != "" && fv != jv
}

// releaseOf is the version in a binary check's detail ("Firecracker
// v1.7.0 (/path)" is "v1.7.0"), or "".
func releaseOf(detail string) string {
	f := strings.Fields(detail)
	if len(f) < 2 || !strings.HasPrefix(f[1], "v") {
		return ""
	}
	return f[1]
}

func softFail(s string) string {
	if s == "fail" {
		return "warn"
	}
	return s
}

func checkDevice(name, path, hint string) check {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return check{Name: name, Status: "fail", Detail: fmt.Sprintf("cannot open %s: %v", path, errors.Unwrap(err)), Hint: hint}
	}
	f.Close()
	return check{Name: name, Status: "ok", Detail: path + " is usable"}
}

// checkBinary finds a binary (explicit path, next to sibling, then PATH) and
// asks it for its version.
func checkBinary(ctx context.Context, name, explicit, sibling string) (string, check) {
	hint := "install " + name + " from a Firecracker release and put it on PATH, or set --firecracker-bin / MVM_FIRECRACKER_BIN"
	if name == "jailer" {
		hint = "install jailer beside firecracker, or set --jailer-bin / MVM_JAILER_BIN"
	}
	path := explicit
	if path == "" && sibling != "" {
		if p := filepath.Join(filepath.Dir(sibling), name); isExecutable(p) {
			path = p
		}
	}
	if path == "" {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", check{Name: name, Status: "fail", Detail: name + " not found on PATH", Hint: hint}
		}
		path = p
	}
	if !isExecutable(path) {
		return "", check{Name: name, Status: "fail", Detail: path + " is not an executable file", Hint: hint}
	}
	out, err := binaryVersion(ctx, path)
	if err != nil {
		return path, check{Name: name, Status: "fail", Detail: fmt.Sprintf("%s --version: %v", path, err), Hint: hint}
	}
	v := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	return path, check{Name: name, Status: "ok", Detail: fmt.Sprintf("%s (%s)", v, path)}
}

// versionProbeTimeout bounds one `--version` query.
const versionProbeTimeout = 5 * time.Second

// binaryVersion runs `path --version` and returns the start of its output.
// It reads the output to the end, keeping only the first versionKeep bytes:
// some Firecracker releases (v1.1.0, v1.4.0) spin at full CPU, ignoring
// SIGTERM, when the pipe they write their version to closes before they
// finish. The probe is short-lived: ctx and versionProbeTimeout bound it,
// and then the process is killed (SIGKILL).
func binaryVersion(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, versionProbeTimeout)
	defer cancel()
	var out headBuffer
	cmd := exec.CommandContext(ctx, path, "--version")
	cmd.Stdout = &out
	cmd.WaitDelay = time.Second // a grandchild holding the pipe cannot hang Wait
	if err := cmd.Run(); err != nil {
		return "", err
	}
	return string(out.b), nil
}

// versionKeep is how much of a `--version` output binaryVersion keeps.
const versionKeep = 4096

// headBuffer keeps the first versionKeep bytes written to it and accepts
// (discards) the rest, so the writer never sees its pipe close.
type headBuffer struct{ b []byte }

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := versionKeep - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

func checkUserfaultfd() check {
	c := checkDevice("userfaultfd", "/dev/userfaultfd", "modprobe userfaultfd support (kernel >= 6.1 has /dev/userfaultfd); or run as root")
	sysctl, err := os.ReadFile("/proc/sys/vm/unprivileged_userfaultfd")
	if err == nil {
		c.Detail += fmt.Sprintf("; vm.unprivileged_userfaultfd=%s", strings.TrimSpace(string(sysctl)))
	}
	if c.Status == "fail" {
		c.Status = "warn" // only the uffd restore backend needs it
	}
	return c
}

func checkCgroup2() check {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return check{Name: "cgroup2", Status: "ok", Detail: "unified cgroup v2 hierarchy at /sys/fs/cgroup"}
	}
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.controllers"); err == nil {
		return check{Name: "cgroup2", Status: "warn", Detail: "hybrid hierarchy: cgroup v2 at /sys/fs/cgroup/unified, v1 controllers elsewhere",
			Hint: "boot with systemd.unified_cgroup_hierarchy=1 for per-VM cgroup v2 limits"}
	}
	return check{Name: "cgroup2", Status: "warn", Detail: "no cgroup v2 hierarchy found", Hint: "mount cgroup2 at /sys/fs/cgroup"}
}

func checkNftables() check {
	conn, err := nftables.New(nftables.AsLasting())
	if err == nil {
		defer conn.CloseLasting()
		_, err = conn.ListTables()
	}
	if err != nil {
		return check{Name: "nftables", Status: "fail", Detail: fmt.Sprintf("cannot list nftables tables through netlink: %v", err),
			Hint: "load nf_tables (modprobe nf_tables) and run as root or with CAP_NET_ADMIN"}
	}
	return check{Name: "nftables", Status: "ok", Detail: "nftables answers through netlink"}
}

func checkForwarding() check {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return check{Name: "ip_forward", Status: "warn", Detail: err.Error()}
	}
	if strings.TrimSpace(string(b)) != "1" {
		// Managed networking turns forwarding on per interface (each
		// slot's veth and the egress interface), not host-wide.
		return check{Name: "ip_forward", Status: "ok", Detail: "net.ipv4.ip_forward=0: managed networking enables forwarding only on the VMs' interfaces and the egress interface"}
	}
	return check{Name: "ip_forward", Status: "ok", Detail: "net.ipv4.ip_forward=1 (host-wide; managed networking still forwards from VMs only to the egress interface)"}
}
