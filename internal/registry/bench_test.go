package registry_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/mvm-dev/microvm/internal/registry"
)

func benchRegistry(b *testing.B) *registry.Registry {
	r, err := registry.Open(filepath.Join(b.TempDir(), "state"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}

// BenchmarkPut measures a durable overwrite of a small record.
func BenchmarkPut(b *testing.B) {
	r := benchRegistry(b)
	v := vmRecord{Name: "web", VCPUs: 2}
	for b.Loop() {
		if err := r.Put("vm", "web-1", v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPutLarge measures a durable overwrite of a ~64 KiB record.
func BenchmarkPutLarge(b *testing.B) {
	r := benchRegistry(b)
	v := makeGen("r0", 1)
	for b.Loop() {
		if err := r.Put("vm", "r0", v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreateDelete measures an exclusive create followed by a delete.
func BenchmarkCreateDelete(b *testing.B) {
	r := benchRegistry(b)
	v := vmRecord{Name: "web", VCPUs: 2}
	for b.Loop() {
		if err := r.Create("lease", "10.0.0.2", v); err != nil {
			b.Fatal(err)
		}
		if err := r.Delete("lease", "10.0.0.2"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGet measures reading and decoding a small record.
func BenchmarkGet(b *testing.B) {
	r := benchRegistry(b)
	if err := r.Put("vm", "web-1", vmRecord{Name: "web", VCPUs: 2}); err != nil {
		b.Fatal(err)
	}
	var v vmRecord
	for b.Loop() {
		if err := r.Get("vm", "web-1", &v); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLockUnlock measures an uncontended Lock and unlock.
func BenchmarkLockUnlock(b *testing.B) {
	r := benchRegistry(b)
	ctx := b.Context()
	for b.Loop() {
		unlock, err := r.Lock(ctx, "vm-1")
		if err != nil {
			b.Fatal(err)
		}
		unlock()
	}
}

// BenchmarkList measures listing 100 records.
func BenchmarkList(b *testing.B) {
	r := benchRegistry(b)
	for i := range 100 {
		if err := r.Put("vm", fmt.Sprintf("vm-%03d", i), i); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, err := r.List("vm"); err != nil {
			b.Fatal(err)
		}
	}
}
