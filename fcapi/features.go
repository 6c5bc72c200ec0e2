package fcapi

import (
	"context"
	"fmt"
	"slices"
)

// Feature names an endpoint, a body field or a field value that appeared
// after Firecracker v1.0.0. The string is what error messages show.
type Feature string

// Features gated by the client (see the package doc for the matrix).
const (
	// Endpoints.
	FeatureEntropy Feature = "PUT /entropy"
	FeatureSerial  Feature = "PUT /serial"

	// PUT /machine-config and PATCH /machine-config.
	FeatureMachineHugePages            Feature = "huge_pages"
	FeatureMachineHugePagesTransparent Feature = `huge_pages "Transparent"`
	FeatureCPUTemplateNone             Feature = `cpu_template "None"`
	FeatureCPUTemplateT2S              Feature = `cpu_template "T2S"`
	FeatureCPUTemplateT2CL             Feature = `cpu_template "T2CL"`
	FeatureCPUTemplateT2A              Feature = `cpu_template "T2A"`
	FeatureCPUTemplateV1N1             Feature = `cpu_template "V1N1"`

	// PUT /drives/{drive_id}: vhost-user-block drives.
	FeatureDriveSocket Feature = "socket (vhost-user-block)"

	// PUT /network-interfaces/{iface_id}.
	FeatureNetMTU Feature = "mtu"

	// PUT /logger.
	FeatureLoggerModule        Feature = "module"
	FeatureLoggerNoPath        Feature = "omitting log_path"
	FeatureLoggerLevelTraceOff Feature = `level "Trace"/"Off"`

	// PUT /metrics.
	FeatureMetricsEmitID     Feature = "emit_id"
	FeatureMetricsProperties Feature = "properties"

	// PUT /mmds/config.
	FeatureMMDSIMDSCompat Feature = "imds_compat"

	// PUT /balloon.
	FeatureBalloonFreePageHinting   Feature = "free_page_hinting"
	FeatureBalloonFreePageReporting Feature = "free_page_reporting"

	// PUT /serial.
	FeatureSerialRateLimiter Feature = "rate_limiter (serial)"

	// PUT /snapshot/load.
	FeatureSnapshotMemBackend       Feature = "mem_backend"
	FeatureSnapshotNetworkOverrides Feature = "network_overrides"
	// FeatureSnapshotTrackDirtyPages is the name track_dirty_pages; older
	// versions get the same setting as enable_diff_snapshots, so it never
	// causes an error.
	FeatureSnapshotTrackDirtyPages Feature = "track_dirty_pages"
	FeatureSnapshotVsockOverride   Feature = "vsock_override"
	FeatureSnapshotClockRealtime   Feature = "clock_realtime"
	FeatureSnapshotHugePages       Feature = "huge_pages (snapshot load)"
)

// minVersions is the first minor release that has each feature.
// Sources: firecracker-api-notes.md §3 (swagger history) and the
// Firecracker CHANGELOG (cpu templates: None 1.1, T2S 1.2, T2CL/T2A 1.3,
// V1N1 1.4; mem_backend 1.1; logger rework 1.6).
var minVersions = map[Feature][2]int{
	FeatureEntropy: {1, 4},
	FeatureSerial:  {1, 14},

	FeatureMachineHugePages:            {1, 7},
	FeatureMachineHugePagesTransparent: {1, 17},
	FeatureCPUTemplateNone:             {1, 1},
	FeatureCPUTemplateT2S:              {1, 2},
	FeatureCPUTemplateT2CL:             {1, 3},
	FeatureCPUTemplateT2A:              {1, 3},
	FeatureCPUTemplateV1N1:             {1, 4},

	FeatureDriveSocket: {1, 6},
	FeatureNetMTU:      {1, 16},

	FeatureLoggerModule:        {1, 6},
	FeatureLoggerNoPath:        {1, 6},
	FeatureLoggerLevelTraceOff: {1, 6},

	FeatureMetricsEmitID:     {1, 17},
	FeatureMetricsProperties: {1, 17},

	FeatureMMDSIMDSCompat: {1, 14},

	FeatureBalloonFreePageHinting:   {1, 14},
	FeatureBalloonFreePageReporting: {1, 14},

	FeatureSerialRateLimiter: {1, 16},

	FeatureSnapshotMemBackend:       {1, 1},
	FeatureSnapshotNetworkOverrides: {1, 12},
	FeatureSnapshotTrackDirtyPages:  {1, 13},
	FeatureSnapshotVsockOverride:    {1, 16},
	FeatureSnapshotClockRealtime:    {1, 16},
	FeatureSnapshotHugePages:        {1, 17},
}

// Features returns every gated feature, sorted by minimum version then
// name.
func Features() []Feature {
	fs := make([]Feature, 0, len(minVersions))
	for f := range minVersions {
		fs = append(fs, f)
	}
	slices.SortFunc(fs, func(a, b Feature) int {
		if c := MinVersion(a).Compare(MinVersion(b)); c != 0 {
			return c
		}
		switch {
		case a < b:
			return -1
		case a > b:
			return 1
		}
		return 0
	})
	return fs
}

// MinVersion returns the first Firecracker version that supports f, or
// 1.0.0 for a feature this package does not gate.
func MinVersion(f Feature) Version {
	mv, ok := minVersions[f]
	if !ok {
		return Version{Major: 1}
	}
	return Version{Major: mv[0], Minor: mv[1]}
}

// Supported reports whether Firecracker version v supports f.
func Supported(v Version, f Feature) bool {
	mv := MinVersion(f)
	return v.AtLeast(mv.Major, mv.Minor)
}

// send sends cl unless ck found a problem with the request, which it
// then returns without sending anything.
func (c *Client) send(ctx context.Context, ck *checker, cl call) error {
	if ck.err != nil {
		return ck.err
	}
	return c.do(ctx, cl)
}

// checker validates one request body against the API rules and the target
// version. It keeps one problem: the first [*FieldError] if any, else the
// [*UnsupportedError] with the highest minimum version (so the error names
// the version that supports the whole request).
type checker struct {
	op     string
	target *Version // nil = newest: every feature is allowed
	err    error
}

// need records an [*UnsupportedError] if the target lacks f.
func (c *checker) need(f Feature) {
	if c.target == nil || Supported(*c.target, f) {
		return
	}
	ue := &UnsupportedError{Op: c.op, Feature: f, Min: MinVersion(f), Target: *c.target}
	switch prev := c.err.(type) {
	case nil:
		c.err = ue
	case *UnsupportedError:
		if ue.Min.Compare(prev.Min) > 0 {
			c.err = ue
		}
	}
}

// supports reports whether the target has f (always true for newest).
func (c *checker) supports(f Feature) bool {
	return c.target == nil || Supported(*c.target, f)
}

// invalid records a [*FieldError].
func (c *checker) invalid(field, format string, args ...any) {
	if _, ok := c.err.(*FieldError); ok {
		return
	}
	c.err = &FieldError{Op: c.op, Field: field, Rule: fmt.Sprintf(format, args...)}
}

// required records a FieldError if s is empty.
func (c *checker) required(field, s string) {
	if s == "" {
		c.invalid(field, "is required")
	}
}

// id checks a resource id used in a path (drive_id, iface_id): non-empty,
// only ASCII letters, digits and '_' (Firecracker's rule, which also keeps
// the id safe to put in a URL path).
func (c *checker) id(field, s string) {
	if s == "" {
		c.invalid(field, "is required")
		return
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_') {
			c.invalid(field, "%q: only letters, digits and '_' are allowed", s)
			return
		}
	}
}

// oneOf checks that a non-empty s is one of the allowed values.
func oneOf[T ~string](c *checker, field string, s T, allowed ...T) {
	if s == "" || slices.Contains(allowed, s) {
		return
	}
	c.invalid(field, "%q: must be one of %q", string(s), allowed)
}

// rateLimiter checks a RateLimiter.
func (c *checker) rateLimiter(field string, rl *RateLimiter) {
	if rl == nil {
		return
	}
	c.tokenBucket(field+".bandwidth", rl.Bandwidth)
	c.tokenBucket(field+".ops", rl.Ops)
}

// tokenBucket checks a TokenBucket: all values >= 0.
func (c *checker) tokenBucket(field string, tb *TokenBucket) {
	if tb == nil {
		return
	}
	if tb.Size < 0 {
		c.invalid(field+".size", "must be >= 0")
	}
	if tb.RefillTime < 0 {
		c.invalid(field+".refill_time", "must be >= 0")
	}
	if tb.OneTimeBurst < 0 {
		c.invalid(field+".one_time_burst", "must be >= 0")
	}
}
