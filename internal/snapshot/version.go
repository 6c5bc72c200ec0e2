package snapshot

import (
	"fmt"
	"strconv"
	"strings"

	microvm "github.com/mvm-dev/microvm"
)

// Compatible reports whether a snapshot made by Firecracker
// manifestFCVersion can be loaded by Firecracker runningFCVersion; the
// error matches [microvm.ErrSnapshotCorrupt] and says "incompatible" when
// it cannot.
//
// The rule. Firecracker's state file carries its own snapshot data format
// version, independent of the Firecracker version, and Firecracker loads a
// file only when the format's MAJOR equals its own and the MINOR is not
// newer (see [CompatibleFormat]). Its encoding (bincode; bitcode in newer
// releases) admits no backward-compatible change, so nearly every release
// bumps MAJOR; since
// v1.6 Firecracker no longer writes snapshots for other releases and
// documents no cross-release loading. Judged by Firecracker versions alone
// the rule is therefore:
//
//   - the same MAJOR.MINOR release loads the snapshot; the PATCH may differ
//     (patch releases fix bugs without changing the state format);
//   - a different MAJOR or MINOR does not, in either direction;
//   - a pre-release or development build ("1.17.0-dev") loads only
//     snapshots of exactly the same version, since its format may change
//     from one build to the next.
//
// When the snapshot's format version and the running binary's are both
// known, [Manifest.LoadableBy] applies Firecracker's own, exact rule
// instead.
//
// Versions are accepted as "1.10.1", "v1.10.1", or the first line of
// `firecracker --version` ("Firecracker v1.10.1"); build metadata ("+abc")
// is ignored. An unparsable manifestFCVersion matches
// [microvm.ErrSnapshotCorrupt]; an unparsable runningFCVersion matches
// [microvm.ErrInvalidArgument].
func Compatible(manifestFCVersion, runningFCVersion string) error {
	made, err := parseFCVersion(manifestFCVersion)
	if err != nil {
		return fmt.Errorf("snapshot firecracker version: %v: %w", err, microvm.ErrSnapshotCorrupt)
	}
	running, err := parseFCVersion(runningFCVersion)
	if err != nil {
		return fmt.Errorf("running firecracker version: %v: %w", err, microvm.ErrInvalidArgument)
	}
	if made.pre != "" || running.pre != "" {
		if made.major != running.major || made.minor != running.minor || made.patch != running.patch || made.pre != running.pre {
			return fmt.Errorf("incompatible: snapshot made by Firecracker %s cannot be loaded by Firecracker %s: "+
				"a pre-release or development build (such as a git build, 1.0.0-44-gc73a27cb) makes and loads snapshots only of exactly its own version: %w",
				made, running, microvm.ErrSnapshotCorrupt)
		}
		return nil
	}
	if made.major != running.major || made.minor != running.minor {
		return fmt.Errorf("incompatible: snapshot made by Firecracker %s cannot be loaded by Firecracker %s: "+
			"snapshots load only on the release (major.minor) that made them: %w",
			made, running, microvm.ErrSnapshotCorrupt)
	}
	return nil
}

// CompatibleFormat reports whether a state file in snapshot data format
// snapshotFormat can be loaded by a Firecracker whose supported format is
// supportedFormat (both "MAJOR.MINOR.PATCH", as printed by `firecracker
// --snapshot-version` and `firecracker --describe-snapshot`). This is
// Firecracker's own check at load: the same MAJOR and a MINOR not newer
// than the supported one; any PATCH. The error matches
// [microvm.ErrSnapshotCorrupt] (unparsable supportedFormat:
// [microvm.ErrInvalidArgument]).
func CompatibleFormat(snapshotFormat, supportedFormat string) error {
	file, err := parseFormatVersion(snapshotFormat)
	if err != nil {
		return fmt.Errorf("snapshot format version: %v: %w", err, microvm.ErrSnapshotCorrupt)
	}
	sup, err := parseFormatVersion(supportedFormat)
	if err != nil {
		return fmt.Errorf("supported snapshot format version: %v: %w", err, microvm.ErrInvalidArgument)
	}
	if file.major != sup.major || file.minor > sup.minor {
		return fmt.Errorf("incompatible: snapshot format %s cannot be loaded by a Firecracker supporting format %s "+
			"(needs the same major and a minor not newer): %w", file, sup, microvm.ErrSnapshotCorrupt)
	}
	return nil
}

// LoadableBy reports whether the snapshot can be loaded by the running
// Firecracker, of version runningFCVersion and supported snapshot data
// format supportedFormat ("" when unknown). When both the manifest's
// SnapshotFormatVersion and supportedFormat are known it applies
// Firecracker's own rule ([CompatibleFormat]); otherwise the rule on
// Firecracker versions ([Compatible]).
func (m Manifest) LoadableBy(runningFCVersion, supportedFormat string) error {
	var err error
	if m.SnapshotFormatVersion != "" && supportedFormat != "" {
		err = CompatibleFormat(m.SnapshotFormatVersion, supportedFormat)
	} else {
		err = Compatible(m.FirecrackerVersion, runningFCVersion)
	}
	if err != nil {
		return fmt.Errorf("snapshot %q: %w", m.ID, err)
	}
	return nil
}

type version struct {
	major, minor, patch int
	pre                 string // pre-release label, "" for a release
}

func (v version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch)
	if v.pre != "" {
		s += "-" + v.pre
	}
	return s
}

// parseFCVersion parses a Firecracker version: "1.10.1", "v1.10.1",
// "Firecracker v1.10.1" (possibly followed by more lines), "1.10"
// (patch 0), with an optional "-pre" label and "+build" metadata.
func parseFCVersion(s string) (version, error) {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	fields := strings.Fields(line)
	switch {
	case len(fields) == 2 && strings.EqualFold(fields[0], "firecracker"):
		line = fields[1]
	case len(fields) == 1:
		line = fields[0]
	default:
		return version{}, fmt.Errorf("%q is not a version (want MAJOR.MINOR.PATCH, e.g. 1.10.1)", truncate(s, 60))
	}
	v, err := parseSemver(line, true)
	if err != nil {
		return version{}, fmt.Errorf("%q is not a version (want MAJOR.MINOR.PATCH, e.g. 1.10.1): %v", truncate(s, 60), err)
	}
	return v, nil
}

// parseFormatVersion parses a snapshot data format version, "MAJOR.MINOR.PATCH".
func parseFormatVersion(s string) (version, error) {
	v, err := parseSemver(strings.TrimSpace(s), false)
	if err != nil {
		return version{}, fmt.Errorf("%q is not a snapshot format version (want MAJOR.MINOR.PATCH, e.g. 8.0.0): %v", truncate(s, 60), err)
	}
	if v.pre != "" {
		return version{}, fmt.Errorf("%q is not a snapshot format version: no pre-release label allowed", truncate(s, 60))
	}
	return v, nil
}

func parseSemver(s string, patchOptional bool) (version, error) {
	s = strings.TrimPrefix(s, "v")
	s, _, _ = strings.Cut(s, "+")
	core, pre, hasPre := strings.Cut(s, "-")
	if hasPre && pre == "" {
		return version{}, fmt.Errorf("empty pre-release label")
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 && !(patchOptional && len(parts) == 2) {
		return version{}, fmt.Errorf("want 3 dot-separated numbers")
	}
	var n [3]int
	for i, p := range parts {
		if p == "" || len(p) > 9 || strings.TrimLeft(p, "0123456789") != "" {
			return version{}, fmt.Errorf("%q is not a number", p)
		}
		n[i], _ = strconv.Atoi(p)
	}
	return version{major: n[0], minor: n[1], patch: n[2], pre: pre}, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
