package main

import (
	"context"
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
