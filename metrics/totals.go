package metrics

import (
	"strings"
	"time"
)

// Totals are cumulative metrics of one VM.
type Totals struct {
	// Counters holds each counter's sum over all reports.
	Counters map[string]uint64 `json:"counters"`
	// Gauges holds each absolute value as last reported.
	Gauges map[string]uint64 `json:"gauges"`
	// Reports counts the reports added; Last is the newest one's time.
	Reports uint64    `json:"reports"`
	Last    time.Time `json:"last,omitzero"`
	// Processes counts the firecracker processes that wrote reports
	// (see Relaunch); Malformed the lines skipped.
	Processes uint64 `json:"processes"`
	Malformed uint64 `json:"malformed"`
}

// Add adds one report: counters are summed (wrapping like Firecracker's
// own u64s), absolute values replace the previous ones (a latency of 0,
// which Firecracker reports until it has measured one, keeps the last
// measured value).
func (t *Totals) Add(r Report) {
	if t.Counters == nil {
		t.Counters = make(map[string]uint64, len(r.Values))
	}
	if t.Gauges == nil {
		t.Gauges = make(map[string]uint64)
	}
	for k, v := range r.Values {
		if Absolute(k) {
			if v == 0 && strings.HasPrefix(k, "latencies_us.") {
				// 0 is "not measured by this process": keep the last
				// latency measured.
				continue
			}
			t.Gauges[k] = v
		} else {
			t.Counters[k] += v
		}
	}
	t.Reports++
	if r.Time.After(t.Last) {
		t.Last = r.Time
	}
}

// Clone returns a deep copy.
func (t Totals) Clone() Totals {
	c := t
	c.Counters = make(map[string]uint64, len(t.Counters))
	for k, v := range t.Counters {
		c.Counters[k] = v
	}
	c.Gauges = make(map[string]uint64, len(t.Gauges))
	for k, v := range t.Gauges {
		c.Gauges[k] = v
	}
	return c
}
