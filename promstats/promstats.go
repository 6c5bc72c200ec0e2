// Package promstats exports the statistics of every VM of a runtime to
// Prometheus: a prometheus.Collector for embedders to register in their
// own registry. It serves nothing itself (no HTTP server).
//
// Every series has a vm label; per-device series add drive or iface.
// Counters are totals over the VM's life (see microvm.HypervisorStats);
// names follow Prometheus conventions (base units, _total for counters).
// The core packages do not import this one.
package promstats

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mvm-dev/microvm"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultTimeout bounds one scrape.
const DefaultTimeout = 10 * time.Second

// workers bounds the VMs read at once during a scrape.
const workers = 4

// Options tunes a Collector.
type Options struct {
	// Flush asks each running VM to flush its hypervisor metrics before
	// it is read (microvm.StatsOptions.Flush): current figures, at the
	// cost of an API request per VM per scrape. Default false: the
	// figures are as of the hypervisor's last periodic flush.
	Flush bool
	// Timeout bounds one scrape. Default DefaultTimeout.
	Timeout time.Duration
}

// Collector is a prometheus.Collector over a runtime's VMs.
type Collector struct {
	rt   microvm.Runtime
	sr   microvm.StatsReader
	opts Options

	up, errs, info                              *prometheus.Desc
	cpu, rss, threads                           *prometheus.Desc
	cgCPU, cgThrottled, cgMem                   *prometheus.Desc
	reports, processes, missed, apiReq, apiFail *prometheus.Desc
	blkRB, blkWB, blkRO, blkWO, blkFO, blkThr   *prometheus.Desc
	netRB, netTB, netRP, netTP, netRD, netTD    *prometheus.Desc
	netRE, netTE, netRT, netTT                  *prometheus.Desc
	vsRB, vsTB, vsRP, vsTP, vsConn              *prometheus.Desc
	mmdsReq, mmdsBad, mmdsTB, mmdsTE, mmdsConn  *prometheus.Desc
	latency                                     *prometheus.Desc
	// all is every Desc above, filled as New makes them (for Describe).
	all          []*prometheus.Desc
	scrapeErrors atomic.Uint64
}

// New returns a collector of rt's VMs; rt must implement
// microvm.StatsReader (else the error matches microvm.ErrUnsupported).
func New(rt microvm.Runtime, opts *Options) (*Collector, error) {
	sr, ok := rt.(microvm.StatsReader)
	if !ok {
		return nil, fmt.Errorf("promstats: runtime %T has no statistics: %w", rt, microvm.ErrUnsupported)
	}
	c := &Collector{rt: rt, sr: sr}
	if opts != nil {
		c.opts = *opts
	}
	if c.opts.Timeout < 0 {
		return nil, fmt.Errorf("promstats: Timeout must be >= 0 (got %s): %w", c.opts.Timeout, microvm.ErrInvalidArgument)
	}
	if c.opts.Timeout == 0 {
		c.opts.Timeout = DefaultTimeout
	}
	vm := []string{"vm"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		desc := prometheus.NewDesc("mvm_"+name, help, labels, nil)
		c.all = append(c.all, desc)
		return desc
	}
	c.up = d("stats_up", "1 if the last scrape listed the VMs, 0 if listing failed.")
	c.errs = d("stats_errors_total", "VM reads that failed, over the collector's life.")
	c.info = d("vm_info", "VM status (always 1).", "vm", "status")
	c.cpu = d("vm_cpu_seconds_total", "CPU time of the VM's hypervisor process (vCPUs included).", "vm", "mode")
	c.rss = d("vm_resident_memory_bytes", "Resident memory of the VM's hypervisor process.", vm...)
	c.threads = d("vm_threads", "Threads of the VM's hypervisor process.", vm...)
	c.cgCPU = d("vm_cgroup_cpu_usage_seconds_total", "CPU time of the VM's cgroup.", vm...)
	c.cgThrottled = d("vm_cgroup_cpu_throttled_seconds_total", "Time the VM's cgroup was held back by its CPU quota.", vm...)
	c.cgMem = d("vm_cgroup_memory_bytes", "Memory charged to the VM's cgroup.", vm...)
	c.reports = d("vm_metrics_reports_total", "Hypervisor metrics reports read.", vm...)
	c.processes = d("vm_hypervisor_starts_total", "Hypervisor processes started for the VM.", vm...)
	c.missed = d("vm_metrics_missed_reports_total", "Metrics reports the hypervisor could not write.", vm...)
	c.apiReq = d("vm_api_requests_total", "Requests to the hypervisor's API.", vm...)
	c.apiFail = d("vm_api_request_failures_total", "Failed requests to the hypervisor's API.", vm...)
	dr := []string{"vm", "drive"}
	c.blkRB = d("vm_block_read_bytes_total", "Bytes the guest read from the drive.", dr...)
	c.blkWB = d("vm_block_written_bytes_total", "Bytes the guest wrote to the drive.", dr...)
	c.blkRO = d("vm_block_reads_total", "Read requests of the drive.", dr...)
	c.blkWO = d("vm_block_writes_total", "Write requests of the drive.", dr...)
	c.blkFO = d("vm_block_flushes_total", "Flush requests of the drive.", dr...)
	c.blkThr = d("vm_block_throttled_total", "Requests held back by the drive's rate limiter.", dr...)
	nf := []string{"vm", "iface"}
	c.netRB = d("vm_network_receive_bytes_total", "Bytes the guest received on the interface.", nf...)
	c.netTB = d("vm_network_transmit_bytes_total", "Bytes the guest sent on the interface.", nf...)
	c.netRP = d("vm_network_receive_packets_total", "Packets the guest received.", nf...)
	c.netTP = d("vm_network_transmit_packets_total", "Packets the guest sent.", nf...)
	c.netRD = d("vm_network_receive_dropped_total", "Frames dropped for want of a guest buffer.", nf...)
	c.netTD = d("vm_network_transmit_dropped_total", "Malformed frames the guest sent.", nf...)
	c.netRE = d("vm_network_receive_errors_total", "Failed receives.", nf...)
	c.netTE = d("vm_network_transmit_errors_total", "Failed sends.", nf...)
	c.netRT = d("vm_network_receive_throttled_total", "Receives held back by the rate limiter.", nf...)
	c.netTT = d("vm_network_transmit_throttled_total", "Sends held back by the rate limiter.", nf...)
	c.vsRB = d("vm_vsock_receive_bytes_total", "Bytes the guest received over vsock.", vm...)
	c.vsTB = d("vm_vsock_transmit_bytes_total", "Bytes the guest sent over vsock.", vm...)
	c.vsRP = d("vm_vsock_receive_packets_total", "Vsock packets the guest received.", vm...)
	c.vsTP = d("vm_vsock_transmit_packets_total", "Vsock packets the guest sent.", vm...)
	c.vsConn = d("vm_vsock_connections_total", "Vsock connections opened.", vm...)
	c.mmdsReq = d("vm_mmds_requests_total", "Requests to the metadata service.", vm...)
	c.mmdsBad = d("vm_mmds_bad_requests_total", "Refused requests to the metadata service.", vm...)
	c.mmdsTB = d("vm_mmds_transmit_bytes_total", "Bytes the metadata service sent.", vm...)
	c.mmdsTE = d("vm_mmds_transmit_errors_total", "Metadata service send errors.", vm...)
	c.mmdsConn = d("vm_mmds_connections_total", "Metadata service connections opened.", vm...)
	c.latency = d("vm_operation_latency_seconds", "Last measured latency of a hypervisor operation.", "vm", "operation")
	return c, nil
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.all {
		ch <- d
	}
}

// Collect reads every VM's statistics (a few at a time) and sends them. A
// VM that cannot be read is left out and counted in
// mvm_stats_errors_total; a failed listing sets mvm_stats_up to 0.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	vms, err := c.rt.List(ctx)
	up := 1.0
	if err != nil {
		up = 0
		c.scrapeErrors.Add(1)
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	stats := make([]*microvm.VMStats, len(vms))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, len(vms)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(vms) {
					return
				}
				st, err := c.sr.Stats(ctx, vms[i].ID, &microvm.StatsOptions{Flush: c.opts.Flush})
				if err != nil {
					if !errors.Is(err, microvm.ErrNotFound) { // destroyed meanwhile
						c.scrapeErrors.Add(1)
					}
					continue
				}
				stats[i] = &st
			}
		})
	}
	wg.Wait()
	for _, st := range stats {
		if st != nil {
			c.collectVM(ch, st)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.errs, prometheus.CounterValue, float64(c.scrapeErrors.Load()))
}

func (c *Collector) collectVM(ch chan<- prometheus.Metric, st *microvm.VMStats) {
	id := st.ID
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append([]string{id}, labels...)...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{id}, labels...)...)
	}
	gauge(c.info, 1, string(st.Status))
	if p := st.Process; p != nil {
		counter(c.cpu, p.UserTime.Seconds(), "user")
		counter(c.cpu, p.SystemTime.Seconds(), "system")
		gauge(c.rss, float64(p.RSSBytes))
		gauge(c.threads, float64(p.Threads))
	}
	if g := st.Cgroup; g != nil {
		counter(c.cgCPU, g.CPUUsage.Seconds())
		counter(c.cgThrottled, g.CPUThrottled.Seconds())
		gauge(c.cgMem, float64(g.MemoryCurrent))
	}
	h := st.Hypervisor
	if h == nil {
		return
	}
	counter(c.reports, float64(h.Flushes))
	counter(c.processes, float64(h.Processes))
	counter(c.missed, float64(h.MissedReports))
	counter(c.apiReq, float64(h.APIRequests))
	counter(c.apiFail, float64(h.APIFailures))
	for drive, b := range h.Drives {
		counter(c.blkRB, float64(b.ReadBytes), drive)
		counter(c.blkWB, float64(b.WriteBytes), drive)
		counter(c.blkRO, float64(b.ReadOps), drive)
		counter(c.blkWO, float64(b.WriteOps), drive)
		counter(c.blkFO, float64(b.FlushOps), drive)
		counter(c.blkThr, float64(b.Throttled), drive)
	}
	for iface, n := range h.Interfaces {
		counter(c.netRB, float64(n.RxBytes), iface)
		counter(c.netTB, float64(n.TxBytes), iface)
		counter(c.netRP, float64(n.RxPackets), iface)
		counter(c.netTP, float64(n.TxPackets), iface)
		counter(c.netRD, float64(n.RxDropped), iface)
		counter(c.netTD, float64(n.TxDropped), iface)
		counter(c.netRE, float64(n.RxErrors), iface)
		counter(c.netTE, float64(n.TxErrors), iface)
		counter(c.netRT, float64(n.RxThrottled), iface)
		counter(c.netTT, float64(n.TxThrottled), iface)
	}
	counter(c.vsRB, float64(h.Vsock.RxBytes))
	counter(c.vsTB, float64(h.Vsock.TxBytes))
	counter(c.vsRP, float64(h.Vsock.RxPackets))
	counter(c.vsTP, float64(h.Vsock.TxPackets))
	counter(c.vsConn, float64(h.Vsock.Connections))
	counter(c.mmdsReq, float64(h.MMDS.Requests))
	counter(c.mmdsBad, float64(h.MMDS.RequestsBad))
	counter(c.mmdsTB, float64(h.MMDS.TxBytes))
	counter(c.mmdsTE, float64(h.MMDS.TxErrors))
	counter(c.mmdsConn, float64(h.MMDS.Connections))
	for op, d := range h.Latencies {
		gauge(c.latency, d.Seconds(), op)
	}
}
