package fcapi

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a Firecracker release version, e.g. 1.10.1 or 1.17.0-dev.
type Version struct {
	Major, Minor, Patch int
	// Pre is the pre-release suffix without the '-', e.g. "dev"; empty for
	// a release.
	Pre string
}

// ParseVersion parses a Firecracker version as printed by the API
// (GET /version "firecracker_version", GET / "vmm_version") or by
// `firecracker --version`. Accepted forms: "1.7.0", "v1.10.1",
// "1.17.0-dev", "Firecracker v1.4.1" (only the first line of the input is
// read; a "+build" suffix is ignored). Major, minor and patch are required
// and must be decimal numbers. Errors wrap [ErrInvalidArgument].
func ParseVersion(s string) (Version, error) {
	in := s
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	if len(s) >= len("firecracker") && strings.EqualFold(s[:len("firecracker")], "firecracker") {
		s = strings.TrimSpace(s[len("firecracker"):])
	}
	if s != "" && (s[0] == 'v' || s[0] == 'V') {
		s = s[1:]
	}
	if i := strings.IndexByte(s, '+'); i >= 0 {
		s = s[:i]
	}
	var v Version
	core := s
	if i := strings.IndexByte(s, '-'); i >= 0 {
		core, v.Pre = s[:i], s[i+1:]
		if v.Pre == "" {
			return Version{}, fmt.Errorf("fcapi: parse version %q: empty pre-release after '-': %w", in, ErrInvalidArgument)
		}
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return Version{}, fmt.Errorf("fcapi: parse version %q: want MAJOR.MINOR.PATCH: %w", in, ErrInvalidArgument)
	}
	nums := [3]*int{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		if p == "" || strings.TrimLeft(p, "0123456789") != "" {
			return Version{}, fmt.Errorf("fcapi: parse version %q: component %q is not a decimal number: %w", in, p, ErrInvalidArgument)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n > 1<<20 {
			return Version{}, fmt.Errorf("fcapi: parse version %q: component %q out of range: %w", in, p, ErrInvalidArgument)
		}
		*nums[i] = n
	}
	return v, nil
}

// AtLeast reports whether v is major.minor or newer. The patch level and
// the pre-release suffix are ignored: a development build such as
// 1.17.0-dev already speaks the API of the 1.17 release it precedes, and
// Firecracker adds API fields in minor releases only.
func (v Version) AtLeast(major, minor int) bool {
	if v.Major != major {
		return v.Major > major
	}
	return v.Minor >= minor
}

// Compare orders versions by major, minor and patch, then a pre-release
// before the release of the same number (1.17.0-dev < 1.17.0). It returns
// -1, 0 or +1. Pre-release suffixes are compared as strings.
func (v Version) Compare(o Version) int {
	for _, d := range [3]int{v.Major - o.Major, v.Minor - o.Minor, v.Patch - o.Patch} {
		if d < 0 {
			return -1
		}
		if d > 0 {
			return 1
		}
	}
	switch {
	case v.Pre == o.Pre:
		return 0
	case v.Pre == "":
		return 1
	case o.Pre == "":
		return -1
	case v.Pre < o.Pre:
		return -1
	default:
		return 1
	}
}

// String formats v as MAJOR.MINOR.PATCH[-PRE], e.g. "1.17.0-dev".
func (v Version) String() string {
	s := strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}
