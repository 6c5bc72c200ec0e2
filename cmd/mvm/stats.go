package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// statsRow is one VM's line of `mvm stats`: its figures and the rates
// between the last two samples.
type statsRow struct {
	microvm.VMStats
	// CPUPercent is the CPU the VM's process used between the samples, in
	// percent of one CPU.
	CPUPercent float64 `json:"cpu_percent"`
	// Rates are bytes per second between the samples.
	DiskReadRate  float64 `json:"disk_read_bytes_per_sec"`
	DiskWriteRate float64 `json:"disk_write_bytes_per_sec"`
	NetRxRate     float64 `json:"net_rx_bytes_per_sec"`
	NetTxRate     float64 `json:"net_tx_bytes_per_sec"`
}

// io totals of one sample.
type ioTotals struct{ dr, dw, rx, tx uint64 }

func totalsOf(s microvm.VMStats) (t ioTotals) {
	if s.Hypervisor == nil {
		return t
	}
	for _, d := range s.Hypervisor.Drives {
		t.dr += d.ReadBytes
		t.dw += d.WriteBytes
	}
	for _, n := range s.Hypervisor.Interfaces {
		t.rx += n.RxBytes
		t.tx += n.TxBytes
	}
	return t
}

func cpuOf(s microvm.VMStats) time.Duration {
	if s.Process == nil {
		return 0
	}
	return s.Process.CPUTime()
}

// rows computes the rates of cur against prev (matched by VM id).
func rows(prev map[string]microvm.VMStats, cur []microvm.VMStats) []statsRow {
	out := make([]statsRow, len(cur))
	for i, s := range cur {
		out[i].VMStats = s
		p, ok := prev[s.ID]
		if !ok {
			continue
		}
		dt := s.Time.Sub(p.Time).Seconds()
		if dt <= 0 {
			continue
		}
		rate := func(a, b uint64) float64 {
			if a < b {
				return 0 // counters restarted (a new VM of the same name)
			}
			return float64(a-b) / dt
		}
		if c, pc := cpuOf(s), cpuOf(p); s.Process != nil && p.Process != nil && s.Process.PID == p.Process.PID && c >= pc {
			out[i].CPUPercent = 100 * (c - pc).Seconds() / dt
		}
		a, b := totalsOf(s), totalsOf(p)
		out[i].DiskReadRate, out[i].DiskWriteRate = rate(a.dr, b.dr), rate(a.dw, b.dw)
		out[i].NetRxRate, out[i].NetTxRate = rate(a.rx, b.rx), rate(a.tx, b.tx)
	}
	return out
}

func statsCmd(g *globals) *cobra.Command {
	var watch bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "stats [NAME...]",
		Short: "Show what VMs use: CPU, memory, disk and network",
		Long: "stats shows each VM's CPU (percent of one CPU), resident memory, and disk and network\n" +
			"totals and rates, from two samples --interval apart (all VMs when no NAME is given).\n" +
			"Disk and network figures need firecracker's metrics, which mvm turns on for the VMs it\n" +
			"starts. --watch repeats every --interval until interrupted.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval <= 0 {
				return usagef("--interval must be positive (got %s)", interval)
			}
			for _, id := range args {
				if err := microvm.ValidateID(id); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			return g.withRuntime(ctx, func(rt microvm.Runtime) error {
				sr, ok := rt.(microvm.StatsReader)
				if !ok {
					return fmt.Errorf("the %s runtime has no statistics: %w", g.runtime, microvm.ErrUnsupported)
				}
				endsOnInterrupt.Store(watch)
				return g.runStats(ctx, rt, sr, args, watch, interval)
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&watch, "watch", false, "refresh every --interval until interrupted (Ctrl-C)")
	f.DurationVar(&interval, "interval", time.Second, "time between samples")
	return cmd
}

// sample reads the stats of ids (every VM when empty), asking each VM to
// flush its metrics first. With named VMs, an unknown one is an error;
// listing all, a VM destroyed meanwhile is left out.
func sample(ctx context.Context, rt microvm.Runtime, sr microvm.StatsReader, ids []string) ([]microvm.VMStats, error) {
	all := len(ids) == 0
	if all {
		vms, err := rt.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, vm := range vms {
			ids = append(ids, vm.ID)
		}
	}
	// A few VMs at once: each read waits on its VM's flush.
	got := make([]*microvm.VMStats, len(ids))
	errs := make([]error, len(ids))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(statsWorkers, len(ids)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return
				}
				s, err := sr.Stats(ctx, ids[i], &microvm.StatsOptions{Flush: true})
				if all && errors.Is(err, microvm.ErrNotFound) {
					continue // destroyed meanwhile
				}
				if err != nil {
					errs[i] = err
					continue
				}
				got[i] = &s
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make([]microvm.VMStats, 0, len(ids))
	for _, s := range got {
		if s != nil {
			out = append(out, *s)
		}
	}
	return out, nil
}

// statsWorkers bounds the VMs `mvm stats` reads at once.
const statsWorkers = 4

func (g *globals) runStats(ctx context.Context, rt microvm.Runtime, sr microvm.StatsReader, ids []string, watch bool, interval time.Duration) error {
	prev := map[string]microvm.VMStats{}
	term := isTerminal(g.stdout)
	for n := 0; ; n++ {
		cur, err := sample(ctx, rt, sr, ids)
		if err != nil {
			if ctx.Err() != nil && watch {
				return nil // interrupted
			}
			return err
		}
		if n > 0 || watch {
			rs := rows(prev, cur)
			if err := g.printStats(rs, watch, term); err != nil {
				return err
			}
		}
		if n > 0 && !watch {
			return nil
		}
		prev = make(map[string]microvm.VMStats, len(cur))
		for _, s := range cur {
			prev[s.ID] = s
		}
		select {
		case <-ctx.Done():
			if watch {
				return nil // Ctrl-C ends a watch cleanly
			}
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

func (g *globals) printStats(rs []statsRow, watch, term bool) error {
	if g.output == "json" {
		if watch { // a stream: one line per VM per sample
			enc := json.NewEncoder(g.stdout)
			for _, r := range rs {
				if err := enc.Encode(r); err != nil {
					return err
				}
			}
			return nil
		}
		if rs == nil {
			rs = []statsRow{}
		}
		return writeJSON(g.stdout, rs)
	}
	if watch {
		if term {
			io.WriteString(g.stdout, "\x1b[H\x1b[2J") // home, clear
		} else {
			fmt.Fprintln(g.stdout)
		}
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATUS\tCPU %\tMEM\tDISK R / W\tDISK R/s / W/s\tNET RX / TX\tNET RX/s / TX/s")
	for _, r := range rs {
		mem, cpu := "-", "-"
		if r.Process != nil {
			mem = bytesStr(float64(r.Process.RSSBytes))
			cpu = fmt.Sprintf("%.1f", r.CPUPercent)
		}
		disk, diskRate, net, netRate := "-", "-", "-", "-"
		if r.Hypervisor != nil {
			t := totalsOf(r.VMStats)
			disk = bytesStr(float64(t.dr)) + " / " + bytesStr(float64(t.dw))
			diskRate = bytesStr(r.DiskReadRate) + " / " + bytesStr(r.DiskWriteRate)
			net = bytesStr(float64(t.rx)) + " / " + bytesStr(float64(t.tx))
			netRate = bytesStr(r.NetRxRate) + " / " + bytesStr(r.NetTxRate)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Status, cpu, mem, disk, diskRate, net, netRate)
	}
	return tw.Flush()
}

// bytesStr is humanBytes of a figure that may be a rate (bytes per second).
func bytesStr(v float64) string { return humanBytes(int64(v)) }

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func eventsCmd(g *globals) *cobra.Command {
	var since string
	cmd := &cobra.Command{
		Use:   "events [NAME]",
		Short: "Follow VM lifecycle events (from every mvm and embedder using the state directory)",
		Long: "events prints each VM lifecycle event as it happens (created, started, paused, resumed,\n" +
			"snapshotted, restored, stopped, crashed, destroyed, adopted, renamed), until interrupted.\n" +
			"A renamed event shows the new name and from=OLD-NAME.\n" +
			"With NAME, only that VM's events, following it across renames: after a renamed event\n" +
			"from NAME (shown), the events of its new name, no longer those of NAME.\n" +
			"--since replays the kept events from a time (RFC 3339) or a duration ago (e.g. 10m).",
		Args: rangeArgs(0, 1, "[NAME]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			keep := func(microvm.Event) bool { return true }
			if len(args) == 1 {
				if err := microvm.ValidateID(args[0]); err != nil {
					return err
				}
				keep = microvm.FollowVM(args[0])
			}
			var from time.Time
			if since != "" {
				if d, err := time.ParseDuration(since); err == nil && d >= 0 {
					from = time.Now().Add(-d)
				} else if t, err := time.Parse(time.RFC3339, since); err == nil {
					from = t
				} else {
					return usagef("--since must be a duration like 10m or a time like 2006-01-02T15:04:05Z (got %q)", since)
				}
			}
			ctx := cmd.Context()
			return g.withRuntime(ctx, func(rt microvm.Runtime) error {
				es, ok := rt.(microvm.EventSource)
				if !ok {
					return fmt.Errorf("the %s runtime has no events: %w", g.runtime, microvm.ErrUnsupported)
				}
				ch, err := es.Events(ctx, &microvm.EventOptions{Since: from})
				if err != nil {
					return err
				}
				endsOnInterrupt.Store(true)
				return g.printEvents(ch, keep)
			})
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "replay kept events since a duration ago or a time")
	return cmd
}

// printEvents prints the events keep keeps until the channel closes
// (interrupted: ctx).
func (g *globals) printEvents(ch <-chan microvm.Event, keep func(microvm.Event) bool) error {
	enc := json.NewEncoder(g.stdout)
	for e := range ch {
		if !keep(e) {
			continue
		}
		var err error
		if g.output == "json" {
			err = enc.Encode(e)
		} else {
			line := e.Time.Local().Format(time.RFC3339Nano) + "  " + e.VM + "  " + string(e.Type) + "  " + string(e.Status)
			if e.From != "" {
				line += "  from=" + e.From
			}
			if e.Snapshot != "" {
				line += "  snapshot=" + e.Snapshot
			}
			if e.Reason != "" {
				line += "  " + e.Reason
			}
			_, err = fmt.Fprintln(g.stdout, line)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
