package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/microvm/internal/realfc"
)

// TestVersionReadsWholeOutput: the version probe reads a binary's whole
// output. The fake firecracker prints its version and then 2 MiB more;
// like the v1.1.0 and v1.4.0 releases, if its stdout closes before it is
// done it ignores SIGTERM and spins (here: it writes a marker file first,
// so the test sees it even after the probe's SIGKILL).
func TestVersionReadsWholeOutput(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "pipe-closed-early")
	bin := filepath.Join(dir, "firecracker")
	script := `#!/bin/sh
trap '' TERM PIPE
echo "Firecracker v1.4.0" || { : > '` + marker + `'; while :; do :; done; }
i=0
while [ $i -lt 4096 ]; do
	printf '%0511d\n' $i || { : > '` + marker + `'; while :; do :; done; }
	i=$((i+1))
done
`
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := binaryVersion(context.Background(), bin)
	if err != nil {
		t.Fatalf("binaryVersion: %v", err)
	}
	if !strings.HasPrefix(out, "Firecracker v1.4.0\n") || len(out) != versionKeep {
		t.Errorf("binaryVersion kept %d bytes starting %q, want %d starting with the version line", len(out), out[:min(len(out), 40)], versionKeep)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the probe closed the binary's stdout before it finished writing")
	}
	_, c := checkBinary(context.Background(), "firecracker", bin, "")
	if c.Status != "ok" || !strings.HasPrefix(c.Detail, "Firecracker v1.4.0 (") {
		t.Errorf("doctor's check: %+v", c)
	}
}

// TestVersionOfRealBinaries: doctor names each real Firecracker build by
// its own --version.
func TestVersionOfRealBinaries(t *testing.T) {
	for _, b := range realfc.Binaries(t) {
		_, c := checkBinary(context.Background(), "firecracker", b.Path, "")
		if c.Status != "ok" || !strings.HasPrefix(c.Detail, "Firecracker v"+b.Version) {
			t.Errorf("%s: %+v, want ok with Firecracker v%s", b.Path, c, b.Version)
		}
	}
}

// TestDoctorKVMPVM: a /dev/kvm served by kvm-pvm opens, but guests die in
// early boot; doctor warns, saying so, instead of calling it usable.
func TestDoctorKVMPVM(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if c := checkKVM(dev, filepath.Join(dir, "no-kvm_pvm")); c.Status != "ok" {
		t.Errorf("hardware KVM: %+v, want ok", c)
	}
	c := checkKVM(dev, dir) // the marker exists
	if c.Status != "warn" || !strings.Contains(c.Detail, "kvm-pvm") || !strings.Contains(c.Detail, "early boot") || c.Hint == "" {
		t.Errorf("kvm-pvm: %+v, want a warning naming kvm-pvm and early boot, with a fix", c)
	}
	if c := checkKVM(filepath.Join(dir, "missing"), dir); c.Status != "fail" {
		t.Errorf("missing device: %+v, want fail", c)
	}
}

// TestDoctorChecksTheJailerGiven: doctor checks the jailer of --jailer-bin
// (or the saved setting), not only one beside firecracker or on PATH, and
// fails one of another release than firecracker's.
func TestDoctorChecksTheJailerGiven(t *testing.T) {
	dir := t.TempDir()
	script := func(name, version string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+version+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fc := script("fc-bin", "Firecracker v1.7.0")
	same := script("jailer-same", "Jailer v1.7.0")
	other := script("jailer-other", "Jailer v1.0.0")
	doctor := func(jailer string) check {
		t.Helper()
		_, stdout, stderr := mvm(t, "--state-dir", t.TempDir(), "--firecracker-bin", fc, "--jailer-bin", jailer, "-o", "json", "doctor")
		var checks []check
		if err := json.Unmarshal([]byte(stdout), &checks); err != nil {
			t.Fatalf("doctor -o json: %v\n%s%s", err, stdout, stderr)
		}
		for _, c := range checks {
			if c.Name == "jailer" {
				return c
			}
		}
		t.Fatalf("no jailer check: %s", stdout)
		return check{}
	}
	if c := doctor(same); c.Status != "ok" || !strings.Contains(c.Detail, same) {
		t.Errorf("--jailer-bin %s: %+v, want ok naming it", same, c)
	}
	if c := doctor(other); c.Status != "fail" || !strings.Contains(c.Detail, "v1.0.0") || !strings.Contains(c.Detail, "v1.7.0") {
		t.Errorf("--jailer-bin of another release: %+v, want fail naming both releases", c)
	}
	if c := doctor(filepath.Join(dir, "nope")); c.Status != "fail" || !strings.Contains(c.Detail, filepath.Join(dir, "nope")) {
		t.Errorf("--jailer-bin missing: %+v, want fail naming it", c)
	}
}
