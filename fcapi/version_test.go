package fcapi

import (
	"errors"
	"testing"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in   string
		want Version
		ok   bool
	}{
		{"1.7.0", Version{1, 7, 0, ""}, true},
		{"v1.10.1", Version{1, 10, 1, ""}, true},
		{"V1.10.1", Version{1, 10, 1, ""}, true},
		{"1.17.0-dev", Version{1, 17, 0, "dev"}, true},
		{"Firecracker v1.4.1", Version{1, 4, 1, ""}, true},
		{"firecracker v1.4.1\n\nSupported snapshot versions: v1.0.0\n", Version{1, 4, 1, ""}, true},
		{"  1.0.0  ", Version{1, 0, 0, ""}, true},
		{"1.8.0-rc.1+build.5", Version{1, 8, 0, "rc.1"}, true},
		{"1.16.1-dev-12-gabcdef", Version{1, 16, 1, "dev-12-gabcdef"}, true},
		{"0.25.2", Version{0, 25, 2, ""}, true},
		{"", Version{}, false},
		{"Firecracker", Version{}, false},
		{"1.7", Version{}, false},
		{"1.7.0.1", Version{}, false},
		{"1..0", Version{}, false},
		{"1.x.0", Version{}, false},
		{"-1.7.0", Version{}, false},
		{"1.-7.0", Version{}, false},
		{"1.7.0-", Version{}, false},
		{"vv1.7.0", Version{}, false},
		{"1.99999999999999999999.0", Version{}, false},
		{"1.7.0 extra", Version{}, false},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.in)
		if tt.ok {
			if err != nil || got != tt.want {
				t.Errorf("ParseVersion(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("ParseVersion(%q) = %v, want an error", tt.in, got)
		} else if !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ParseVersion(%q) error %v does not match ErrInvalidArgument", tt.in, err)
		}
	}
}

func TestVersionAtLeast(t *testing.T) {
	tests := []struct {
		v            Version
		major, minor int
		want         bool
	}{
		{Version{1, 12, 0, ""}, 1, 12, true},
		{Version{1, 11, 9, ""}, 1, 12, false},
		{Version{1, 13, 0, ""}, 1, 12, true},
		{Version{1, 17, 0, "dev"}, 1, 17, true}, // dev build counts as its release
		{Version{2, 0, 0, ""}, 1, 17, true},
		{Version{0, 99, 0, ""}, 1, 0, false},
		{Version{1, 0, 0, ""}, 1, 0, true},
	}
	for _, tt := range tests {
		if got := tt.v.AtLeast(tt.major, tt.minor); got != tt.want {
			t.Errorf("%v.AtLeast(%d, %d) = %v, want %v", tt.v, tt.major, tt.minor, got, tt.want)
		}
	}
}

func TestVersionCompareAndString(t *testing.T) {
	order := []string{"0.25.0", "1.0.0", "1.7.0-dev", "1.7.0", "1.7.1", "1.10.0-dev", "1.10.0-rc1", "1.10.0", "2.0.0"}
	for i := range order {
		for j := range order {
			a, b := *mustVersion(t, order[i]), *mustVersion(t, order[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("%v.Compare(%v) = %d, want %d", a, b, got, want)
			}
		}
		if s := mustVersion(t, order[i]).String(); s != order[i] {
			t.Errorf("String() = %q, want %q", s, order[i])
		}
	}
}
