package firecracker

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkJailedPairCheck measures what a jailed launch spends checking
// its recorded pair: "cached" is the check of an unchanged file (a
// stat), "probe" the first check by a runtime (`--version` run).
func BenchmarkJailedPairCheck(b *testing.B) {
	dir := os.Getenv("MVM_SHARED_DIR")
	if dir == "" {
		dir = "../../shared"
	}
	bin := filepath.Join(dir, "firecracker", "firecracker-v1.7.0")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			b.Fatal(err)
		}
		b.Skip(err)
	}
	l := &jailLauncher{versions: map[string]fileVersion{}}
	b.Run("probe", func(b *testing.B) {
		for b.Loop() {
			clear(l.versions)
			if _, err := l.versionOf(bin, "Firecracker v"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := l.checkRecorded("firecracker", bin, "Firecracker v", "1.7.0"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
