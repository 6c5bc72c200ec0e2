package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	microvm "github.com/mvm-dev/microvm"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (g *globals) printVM(vm microvm.VM) error {
	if g.output == "json" {
		return writeJSON(g.stdout, vm)
	}
	return g.printVMs([]microvm.VM{vm})
}

func (g *globals) printVMs(vms []microvm.VM) error {
	if g.output == "json" {
		if vms == nil {
			vms = []microvm.VM{}
		}
		return writeJSON(g.stdout, vms)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tPID\tVCPUS\tMEMORY\tCREATED\tERROR")
	for _, vm := range vms {
		pid := "-"
		if vm.Backend.PID != 0 {
			pid = strconv.Itoa(vm.Backend.PID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\n", vm.ID, vm.Status, pid, vm.Spec.VCPUs, vm.Spec.MemoryMiB,
			vm.CreatedAt.Local().Format(time.DateTime), vm.LastError)
	}
	return tw.Flush()
}

func (g *globals) printSnapshots(snaps []microvm.Snapshot) error {
	if g.output == "json" {
		if snaps == nil {
			snaps = []microvm.Snapshot{}
		}
		return writeJSON(g.stdout, snaps)
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVM\tTYPE\tPARENT\tSIZE\tCREATED")
	for _, s := range snaps {
		parent := s.Parent
		if parent == "" {
			parent = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.VMID, s.Type, parent, humanBytes(s.Size),
			s.CreatedAt.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
