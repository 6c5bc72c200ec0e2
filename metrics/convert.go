package metrics

import (
	"strings"
	"time"

	"github.com/mvm-dev/microvm"
)

// Hypervisor maps the totals to the runtime-neutral view. Per-device
// groups (block_<drive id>, net_<iface id>) become Drives and Interfaces;
// the aggregate block and net groups are left in Counters only.
func (t Totals) Hypervisor() *microvm.HypervisorStats {
	h := &microvm.HypervisorStats{
		Flushes:   t.Reports,
		LastFlush: t.Last,
		Processes: t.Processes,
		Counters:  make(map[string]uint64, len(t.Counters)),
		Gauges:    make(map[string]uint64, len(t.Gauges)),
	}
	c := t.Counters
	for k, v := range c {
		h.Counters[k] = v
		group, field, _ := strings.Cut(k, ".")
		switch {
		case strings.HasPrefix(group, "block_"):
			id := group[len("block_"):]
			if h.Drives == nil {
				h.Drives = map[string]microvm.BlockStats{}
			}
			b := h.Drives[id]
			switch field {
			case "read_bytes":
				b.ReadBytes = v
			case "write_bytes":
				b.WriteBytes = v
			case "read_count":
				b.ReadOps = v
			case "write_count":
				b.WriteOps = v
			case "flush_count":
				b.FlushOps = v
			case "rate_limiter_throttled_events":
				b.Throttled = v
			}
			h.Drives[id] = b
		case strings.HasPrefix(group, "net_"):
			id := group[len("net_"):]
			if h.Interfaces == nil {
				h.Interfaces = map[string]microvm.NetStats{}
			}
			n := h.Interfaces[id]
			switch field {
			case "rx_bytes_count":
				n.RxBytes = v
			case "tx_bytes_count":
				n.TxBytes = v
			case "rx_packets_count":
				n.RxPackets = v
			case "tx_packets_count":
				n.TxPackets = v
			case "no_rx_avail_buffer":
				n.RxDropped = v
			case "tx_malformed_frames":
				n.TxDropped = v
			case "rx_fails":
				n.RxErrors += v
			case "tap_read_fails":
				n.RxErrors += v
			case "tx_fails":
				n.TxErrors += v
			case "tap_write_fails":
				n.TxErrors += v
			case "rx_rate_limiter_throttled":
				n.RxThrottled = v
			case "tx_rate_limiter_throttled":
				n.TxThrottled = v
			}
			h.Interfaces[id] = n
		case strings.HasSuffix(group, "_api_requests"):
			if strings.HasSuffix(field, "_fails") {
				h.APIFailures += v
			} else if strings.HasSuffix(field, "_count") {
				h.APIRequests += v
			}
		}
	}
	h.Vsock = microvm.VsockStats{
		RxBytes: c["vsock.rx_bytes_count"], TxBytes: c["vsock.tx_bytes_count"],
		RxPackets: c["vsock.rx_packets_count"], TxPackets: c["vsock.tx_packets_count"],
		Connections: c["vsock.conns_added"],
	}
	h.MMDS = microvm.MMDSStats{
		Requests:    c["mmds.rx_accepted"],
		RequestsBad: c["mmds.rx_accepted_err"] + c["mmds.rx_bad_eth"] + c["mmds.rx_invalid_token"] + c["mmds.rx_no_token"],
		TxBytes:     c["mmds.tx_bytes"], TxErrors: c["mmds.tx_errors"],
		Connections: c["mmds.connections_created"],
	}
	h.MissedReports = c["logger.missed_metrics_count"]
	for k, v := range t.Gauges {
		h.Gauges[k] = v
		if name, ok := strings.CutPrefix(k, "latencies_us."); ok && v > 0 {
			if h.Latencies == nil {
				h.Latencies = map[string]time.Duration{}
			}
			h.Latencies[name] = time.Duration(v) * time.Microsecond
		}
	}
	return h
}
