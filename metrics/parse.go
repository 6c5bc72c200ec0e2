package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// MaxLine bounds one report line; longer lines are skipped as malformed.
const MaxLine = 1 << 20

// ErrMalformed matches errors for lines that are not metrics reports.
var ErrMalformed = errors.New("malformed metrics report")

// Report is one flush: every numeric field by "group.field" (nested
// objects add more dots, e.g. "vcpu.exit_io_in_agg.min_us").
type Report struct {
	// Time is the report's utc_timestamp_ms.
	Time time.Time
	// Values holds the fields.
	Values map[string]uint64
}

// Parse reads one report line (without or with its newline).
func Parse(line []byte) (Report, error) {
	line = bytes.TrimSpace(line)
	if len(line) > MaxLine {
		return Report{}, fmt.Errorf("%w: line of %d bytes exceeds %d", ErrMalformed, len(line), MaxLine)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var top map[string]any
	if err := dec.Decode(&top); err != nil {
		return Report{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if dec.More() {
		return Report{}, fmt.Errorf("%w: trailing data after the object", ErrMalformed)
	}
	ts, ok := top["utc_timestamp_ms"].(json.Number)
	if !ok {
		return Report{}, fmt.Errorf("%w: no utc_timestamp_ms", ErrMalformed)
	}
	ms, err := ts.Int64()
	if err != nil || ms < 0 {
		return Report{}, fmt.Errorf("%w: utc_timestamp_ms %q is not a non-negative integer", ErrMalformed, ts)
	}
	r := Report{Time: time.UnixMilli(ms).UTC(), Values: make(map[string]uint64, 256)}
	for k, v := range top {
		if k == "utc_timestamp_ms" || k == "id" || k == "properties" {
			continue
		}
		g, ok := v.(map[string]any)
		if !ok {
			continue // unknown top-level scalars are not metrics
		}
		flatten(r.Values, k, g, 0)
	}
	return r, nil
}

// flatten adds the numeric leaves of g under prefix. Negative, fractional
// and non-numeric leaves are ignored (Firecracker writes only u64).
func flatten(out map[string]uint64, prefix string, g map[string]any, depth int) {
	if depth > 4 {
		return
	}
	for k, v := range g {
		key := prefix + "." + k
		switch v := v.(type) {
		case json.Number:
			var n uint64
			if _, err := fmt.Sscan(v.String(), &n); err == nil && !strings.ContainsAny(v.String(), ".eE-") {
				out[key] = n
			}
		case map[string]any:
			flatten(out, key, v, depth+1)
		}
	}
}

// Absolute reports whether the field at key ("group.field...") is a
// SharedStoreMetric, written as its value rather than as the change since
// the last flush.
func Absolute(key string) bool {
	group, field, _ := strings.Cut(key, ".")
	last := field
	if i := strings.LastIndexByte(field, '.'); i >= 0 {
		last = field[i+1:]
	}
	switch {
	case group == "latencies_us":
		return true
	case group == "api_server":
		return strings.HasPrefix(field, "process_startup_time")
	case group == "signals":
		return field != "sigpipe"
	case group == "seccomp":
		return field == "num_faults"
	case group == "balloon":
		return field == "balloon_size_mb"
	case strings.HasPrefix(group, "vhost_user"):
		return strings.HasSuffix(field, "_time_us")
	case last == "min_us" || last == "max_us":
		return true
	}
	return false
}
