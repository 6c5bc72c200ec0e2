package server

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

// ErrUsage marks command-line and environment errors (exit status 1).
var ErrUsage = errors.New("fcstandin: bad usage")

// DefaultAPISock is Firecracker's default API socket path.
const DefaultAPISock = "/run/firecracker.socket"

// DefaultInstanceID is Firecracker's default instance id.
const DefaultInstanceID = "anonymous-instance"

// DefaultMaxPayload is Firecracker's default --http-api-max-payload-size.
const DefaultMaxPayload = 51200

// DefaultStopDelay is how long after SendCtrlAltDel the process exits.
const DefaultStopDelay = 50 * time.Millisecond

// Options configure one stand-in process. Build them with ParseArgs.
type Options struct {
	APISock       string // --api-sock
	ID            string // --id
	ShowVersion   bool   // --version
	LogPath       string // --log-path
	Level         string // --level
	Module        string // --module
	ShowLevel     bool   // --show-level
	ShowLogOrigin bool   // --show-log-origin
	MetricsPath   string // --metrics-path
	BootTimer     bool   // --boot-timer (ignored)
	EnablePCI     bool   // --enable-pci: post-boot hot-plug/unplug allowed
	NoSeccomp     bool   // --no-seccomp (ignored)
	SeccompFilter string // --seccomp-filter (ignored)
	StartTimeUs   int64  // --start-time-us (ignored)
	StartTimeCPU  int64  // --start-time-cpu-us (ignored)
	ParentCPUUs   int64  // --parent-cpu-time-us (ignored)
	MaxPayload    int64  // --http-api-max-payload-size
	MMDSSizeLimit int64  // --mmds-size-limit

	API        string        // FCSTANDIN_API: fcstandin.APIv10 or fcstandin.APILatest
	SpecDir    string        // FCSTANDIN_SPEC_DIR (resolved later when empty)
	SpecCache  string        // FCSTANDIN_SPEC_CACHE: "" (default folder), "off" or an absolute folder
	Crash      []crashSpec   // FCSTANDIN_CRASH
	StartDelay time.Duration // FCSTANDIN_START_DELAY
	StopDelay  time.Duration // FCSTANDIN_STOP_DELAY
	Exit       *exitSpec     // FCSTANDIN_EXIT
	// IgnoreStop (FCSTANDIN_IGNORE_STOP=1): SIGTERM and SIGINT are ignored
	// and SendCtrlAltDel has no effect (a hung guest): only SIGKILL ends
	// the process.
	IgnoreStop bool
	// SnapshotDelay (FCSTANDIN_SNAPSHOT_DELAY): how long PUT
	// /snapshot/create takes before it writes the files (the API answers
	// nothing else meanwhile, as Firecracker's does not).
	SnapshotDelay time.Duration
	// AnswerDelay (FCSTANDIN_ANSWER_DELAY): requests whose answer is
	// held back after they took effect, by "METHOD /path"; the API
	// serves other requests meanwhile.
	AnswerDelay map[string]time.Duration
}

type flagKind int

const (
	flagBool flagKind = iota
	flagString
	flagInt
)

var knownFlags = map[string]flagKind{
	"api-sock": flagString, "id": flagString, "version": flagBool,
	"log-path": flagString, "level": flagString, "module": flagString,
	"show-level": flagBool, "show-log-origin": flagBool, "metrics-path": flagString,
	"boot-timer": flagBool, "seccomp-filter": flagString, "no-seccomp": flagBool,
	"start-time-us": flagInt, "start-time-cpu-us": flagInt, "parent-cpu-time-us": flagInt,
	"http-api-max-payload-size": flagInt, "mmds-size-limit": flagInt, "enable-pci": flagBool,
}

// Real Firecracker flags the stand-in does not implement.
var unsupportedFlags = map[string]bool{
	"config-file": true, "no-api": true, "metadata": true,
	"snapshot-version": true, "describe-snapshot": true,
}

// ParseArgs parses Firecracker's command line (args without the program
// name) and the FCSTANDIN_* environment.
func ParseArgs(args []string, getenv func(string) string) (Options, error) {
	o := Options{APISock: DefaultAPISock, ID: DefaultInstanceID, MaxPayload: DefaultMaxPayload, StopDelay: DefaultStopDelay}
	seen := map[string]bool{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") || len(a) == 2 {
			return o, fmt.Errorf("%w: Found argument '%s' which wasn't expected, or isn't valid in this context.", ErrUsage, a)
		}
		name := a[2:]
		if unsupportedFlags[name] {
			return o, fmt.Errorf("%w: argument '--%s' is a real Firecracker flag the stand-in does not implement", ErrUsage, name)
		}
		kind, ok := knownFlags[name]
		if !ok {
			return o, fmt.Errorf("%w: Found argument '%s' which wasn't expected, or isn't valid in this context.", ErrUsage, a)
		}
		if seen[name] {
			return o, fmt.Errorf("%w: The argument '%s' was provided more than once.", ErrUsage, a)
		}
		seen[name] = true
		val := ""
		if kind != flagBool {
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
				return o, fmt.Errorf("%w: The argument '%s' requires a value, but none was supplied", ErrUsage, a)
			}
			i++
			val = args[i]
		}
		var n int64
		if kind == flagInt {
			v, err := strconv.ParseInt(val, 10, 64)
			if err != nil || v < 0 {
				return o, fmt.Errorf("%w: argument '%s': invalid value %q: want a non-negative integer", ErrUsage, a, val)
			}
			n = v
		}
		switch name {
		case "api-sock":
			o.APISock = val
		case "id":
			o.ID = val
		case "version":
			o.ShowVersion = true
		case "log-path":
			o.LogPath = val
		case "level":
			if _, ok := parseLevel(val); !ok {
				return o, fmt.Errorf("%w: argument '--level': invalid log level %q", ErrUsage, val)
			}
			o.Level = val
		case "module":
			o.Module = val
		case "show-level":
			o.ShowLevel = true
		case "show-log-origin":
			o.ShowLogOrigin = true
		case "metrics-path":
			o.MetricsPath = val
		case "boot-timer":
			o.BootTimer = true
		case "seccomp-filter":
			o.SeccompFilter = val
		case "no-seccomp":
			o.NoSeccomp = true
		case "start-time-us":
			o.StartTimeUs = n
		case "start-time-cpu-us":
			o.StartTimeCPU = n
		case "parent-cpu-time-us":
			o.ParentCPUUs = n
		case "http-api-max-payload-size":
			o.MaxPayload = n
		case "mmds-size-limit":
			o.MMDSSizeLimit = n
		case "enable-pci":
			o.EnablePCI = true
		}
	}
	if o.SeccompFilter != "" && o.NoSeccomp {
		return o, fmt.Errorf("%w: '--seccomp-filter' cannot be used with '--no-seccomp'", ErrUsage)
	}
	if o.MMDSSizeLimit == 0 {
		o.MMDSSizeLimit = o.MaxPayload
	}
	if !o.ShowVersion {
		if err := validInstanceID(o.ID); err != nil {
			return o, err
		}
	}

	switch api := getenv("FCSTANDIN_API"); api {
	case "", fcstandin.APILatest:
		o.API = fcstandin.APILatest
	case fcstandin.APIv10:
		o.API = fcstandin.APIv10
	default:
		return o, fmt.Errorf("%w: FCSTANDIN_API=%q: want %q or %q", ErrUsage, api, fcstandin.APIv10, fcstandin.APILatest)
	}
	o.SpecDir = getenv("FCSTANDIN_SPEC_DIR")
	o.SpecCache = getenv("FCSTANDIN_SPEC_CACHE")
	if o.SpecCache != "" && o.SpecCache != specCacheOff && !filepath.IsAbs(o.SpecCache) {
		return o, fmt.Errorf("%w: FCSTANDIN_SPEC_CACHE=%q: want %q or an absolute directory", ErrUsage, o.SpecCache, specCacheOff)
	}
	var err error
	if o.Crash, err = parseCrash(getenv("FCSTANDIN_CRASH")); err != nil {
		return o, err
	}
	if o.StartDelay, err = parseDelay("FCSTANDIN_START_DELAY", getenv("FCSTANDIN_START_DELAY"), 0); err != nil {
		return o, err
	}
	if o.StopDelay, err = parseDelay("FCSTANDIN_STOP_DELAY", getenv("FCSTANDIN_STOP_DELAY"), DefaultStopDelay); err != nil {
		return o, err
	}
	if o.Exit, err = parseExit(getenv("FCSTANDIN_EXIT")); err != nil {
		return o, err
	}
	switch v := getenv("FCSTANDIN_IGNORE_STOP"); v {
	case "", "0":
	case "1":
		o.IgnoreStop = true
	default:
		return o, fmt.Errorf("%w: FCSTANDIN_IGNORE_STOP=%q: want 1 or 0", ErrUsage, v)
	}
	if o.SnapshotDelay, err = parseDelay("FCSTANDIN_SNAPSHOT_DELAY", getenv("FCSTANDIN_SNAPSHOT_DELAY"), 0); err != nil {
		return o, err
	}
	if o.AnswerDelay, err = parseAnswerDelay(getenv("FCSTANDIN_ANSWER_DELAY")); err != nil {
		return o, err
	}
	return o, nil
}

// validInstanceID applies Firecracker's --id rule: 1-64 characters,
// alphanumeric or '-'.
func validInstanceID(id string) error {
	if len(id) < 1 || len(id) > 64 {
		return fmt.Errorf("%w: Invalid instance ID: Invalid len for instance ID %q: must be 1-64 characters", ErrUsage, id)
	}
	for _, c := range id {
		if !(c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return fmt.Errorf("%w: Invalid instance ID: Invalid char (%q) at position in instance ID %q: only alphanumeric characters and '-' are allowed", ErrUsage, c, id)
		}
	}
	return nil
}

// parseDelay accepts a Go duration ("150ms") or a bare number of
// milliseconds ("150").
func parseDelay(name, v string, def time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
		return time.Duration(n) * time.Millisecond, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%w: %s=%q: want a duration such as 100ms or a number of milliseconds", ErrUsage, name, v)
	}
	return d, nil
}

// exitSpec is FCSTANDIN_EXIT: the process exits by itself with status
// code, after the VM has been running for after.
type exitSpec struct {
	after time.Duration
	code  int
	kvm   bool // "kvm": a vCPU stopped by KVM, then exit 0 (as v1.7 does)
}

// parseExit parses "after-start:<duration>[:<status>|kvm]" (status 0 to
// 255, default 0).
func parseExit(v string) (*exitSpec, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	bad := fmt.Errorf("%w: FCSTANDIN_EXIT=%q: want after-start:<duration>[:<exit status 0-255>|kvm]", ErrUsage, v)
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "after-start:")
	if !ok {
		return nil, bad
	}
	d, code, hasCode := strings.Cut(rest, ":")
	e := &exitSpec{}
	var err error
	if e.after, err = parseDelay("FCSTANDIN_EXIT after-start", d, 0); err != nil {
		return nil, err
	}
	if hasCode && code == "kvm" {
		e.kvm = true
	} else if hasCode {
		if e.code, err = strconv.Atoi(code); err != nil || e.code < 0 || e.code > 255 {
			return nil, bad
		}
	}
	return e, nil
}

// parseAnswerDelay parses FCSTANDIN_ANSWER_DELAY: comma-separated
// "METHOD /path=<duration>" items.
func parseAnswerDelay(v string) (map[string]time.Duration, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	out := map[string]time.Duration{}
	for _, item := range strings.Split(v, ",") {
		req, d, ok := strings.Cut(strings.TrimSpace(item), "=")
		method, path, _ := strings.Cut(req, " ")
		if !ok || (method != "GET" && method != "PUT" && method != "PATCH") || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("%w: FCSTANDIN_ANSWER_DELAY item %q: want \"METHOD /path=<duration>\"", ErrUsage, item)
		}
		delay, err := parseDelay("FCSTANDIN_ANSWER_DELAY", d, 0)
		if err != nil {
			return nil, err
		}
		out[method+" "+path] = delay
	}
	return out, nil
}

// crashSpec is one FCSTANDIN_CRASH trigger.
type crashSpec struct {
	action  string        // "InstanceStart", "FlushMetrics", "SendCtrlAltDel", "SnapshotLoad", "SnapshotCreate"
	method  string        // with path: "PUT"
	path    string        // "/snapshot/create"
	after   time.Duration // after-start:<d>
	isAfter bool
}

func (c crashSpec) String() string {
	switch {
	case c.isAfter:
		return "after-start:" + c.after.String()
	case c.action != "":
		return c.action
	default:
		return c.method + " " + c.path
	}
}

// parseCrash parses a comma-separated list of triggers: an action type
// (InstanceStart, FlushMetrics, SendCtrlAltDel), "METHOD /path", or
// "after-start:<duration>".
func parseCrash(v string) ([]crashSpec, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var out []crashSpec
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		switch {
		case item == "InstanceStart" || item == "FlushMetrics" || item == "SendCtrlAltDel":
			out = append(out, crashSpec{action: item})
		case strings.HasPrefix(item, "after-start:"):
			d, err := parseDelay("FCSTANDIN_CRASH after-start", strings.TrimPrefix(item, "after-start:"), 0)
			if err != nil {
				return nil, err
			}
			out = append(out, crashSpec{isAfter: true, after: d})
		default:
			method, path, ok := strings.Cut(item, " ")
			path = strings.TrimSpace(path)
			switch method {
			case "GET", "PUT", "PATCH", "DELETE":
			default:
				ok = false
			}
			if !ok || !strings.HasPrefix(path, "/") {
				return nil, fmt.Errorf("%w: FCSTANDIN_CRASH item %q: want an action (InstanceStart, FlushMetrics, SendCtrlAltDel), \"METHOD /path\" or after-start:<duration>", ErrUsage, item)
			}
			out = append(out, crashSpec{method: method, path: path})
		}
	}
	return out, nil
}
