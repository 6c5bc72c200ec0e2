package snapshot

import (
	"errors"
	"strings"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

func TestCompatible(t *testing.T) {
	const (
		ok      = ""
		corrupt = "corrupt"
		badArg  = "invalid"
	)
	cases := []struct {
		made, running string
		want          string
	}{
		{"1.10.1", "1.10.1", ok},
		{"1.10.0", "1.10.1", ok},               // patch differs: fine
		{"1.10.1", "1.10.0", ok},               // either way
		{"v1.10.1", "Firecracker v1.10.1", ok}, // spellings
		{"1.10", "1.10.3", ok},                 // patch omitted
		{"1.10.1+build.5", "1.10.1", ok},       // build metadata ignored
		{"Firecracker v1.7.0\n\nSupported snapshot data format versions: v2.0.0", "1.7.0", ok},
		{"1.9.1", "1.10.1", corrupt},      // minor differs
		{"1.10.1", "1.9.1", corrupt},      // older binary
		{"0.25.0", "1.0.0", corrupt},      // major differs
		{"1.17.0-dev", "1.17.0-dev", ok},  // same dev build
		{"1.17.0-dev", "1.17.0", corrupt}, // dev vs release
		{"1.17.0", "1.17.0-dev", corrupt},
		{"1.17.0-rc1", "1.17.0-rc2", corrupt},
		{"", "1.10.1", corrupt},
		{"latest", "1.10.1", corrupt},
		{"1.10.x", "1.10.1", corrupt},
		{"1.10.1", "", badArg},
		{"1.10.1", "1.-1.0", badArg},
		{"1.10.1", "cloud-hypervisor v40.0 extra", badArg},
	}
	for _, c := range cases {
		err := Compatible(c.made, c.running)
		switch c.want {
		case ok:
			if err != nil {
				t.Errorf("Compatible(%q, %q) = %v, want nil", c.made, c.running, err)
			}
		case corrupt:
			if !errors.Is(err, microvm.ErrSnapshotCorrupt) {
				t.Errorf("Compatible(%q, %q) = %v, want ErrSnapshotCorrupt", c.made, c.running, err)
			}
		case badArg:
			if !errors.Is(err, microvm.ErrInvalidArgument) {
				t.Errorf("Compatible(%q, %q) = %v, want ErrInvalidArgument", c.made, c.running, err)
			}
		}
	}
	err := Compatible("1.9.0", "1.10.1")
	if !strings.Contains(err.Error(), "incompatible") || !strings.Contains(err.Error(), "1.9.0") || !strings.Contains(err.Error(), "1.10.1") {
		t.Errorf("error %q should say incompatible and name both versions", err)
	}
}

func TestCompatibleFormat(t *testing.T) {
	cases := []struct {
		file, supported string
		ok              bool
	}{
		{"4.0.0", "4.0.0", true},
		{"4.0.3", "4.0.0", true}, // any patch
		{"4.1.0", "4.2.0", true}, // older minor
		{"4.3.0", "4.2.0", false},
		{"3.0.0", "4.0.0", false},
		{"5.0.0", "4.0.0", false},
		{"v8.0.0", "8.0.0", true},
		{"8.0", "8.0.0", false},
	}
	for _, c := range cases {
		err := CompatibleFormat(c.file, c.supported)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, microvm.ErrSnapshotCorrupt)) {
			t.Errorf("CompatibleFormat(%q, %q) = %v, want ok=%v", c.file, c.supported, err, c.ok)
		}
	}
	if err := CompatibleFormat("1.0.0", "x"); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("bad supported format: %v", err)
	}
}

func TestLoadableBy(t *testing.T) {
	m := Manifest{ID: "s", FirecrackerVersion: "1.10.1", SnapshotFormatVersion: "4.0.0"}
	// With both format versions Firecracker's own rule decides, even
	// across releases.
	if err := m.LoadableBy("1.11.0", "4.1.0"); err != nil {
		t.Errorf("same format major, newer minor: %v", err)
	}
	if err := m.LoadableBy("1.10.1", "5.0.0"); !errors.Is(err, microvm.ErrSnapshotCorrupt) {
		t.Errorf("format major differs: %v", err)
	}
	// Without the running format, the release rule.
	if err := m.LoadableBy("1.11.0", ""); !errors.Is(err, microvm.ErrSnapshotCorrupt) || !strings.Contains(err.Error(), `snapshot "s"`) {
		t.Errorf("other release, no format: %v", err)
	}
	if err := m.LoadableBy("1.10.2", ""); err != nil {
		t.Errorf("same release: %v", err)
	}
	m.SnapshotFormatVersion = ""
	if err := m.LoadableBy("1.10.2", "4.0.0"); err != nil {
		t.Errorf("no recorded format, same release: %v", err)
	}
}
