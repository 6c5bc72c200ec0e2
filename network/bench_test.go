//go:build linux

package network

import (
	"fmt"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/network/internal/nstest"
)

// BenchmarkSetup measures Setup and Teardown of one VM network, with and
// without the warm pool, with the on-disk registry (fsync per write) and
// with an in-memory Store. "setup" reports Setup alone (ns/op), with the
// timer stopped while the pool refills and during Teardown; "teardown" the
// opposite.
func BenchmarkSetup(b *testing.B) {
	nstest.RequireRoot(b)
	for _, store := range []string{"registry", "mem"} {
		for _, pool := range []int{0, 4} {
			b.Run(fmt.Sprintf("store=%s/pool=%d/setup", store, pool), func(b *testing.B) {
				benchSetup(b, store, pool, true)
			})
			b.Run(fmt.Sprintf("store=%s/pool=%d/teardown", store, pool), func(b *testing.B) {
				benchSetup(b, store, pool, false)
			})
		}
	}
}

func benchSetup(b *testing.B, store string, poolSize int, timeSetup bool) {
	h := newHarness(b, func(c *Config) {
		c.PoolSize = poolSize
		if store == "mem" {
			c.Store = newMemStore()
		}
	})
	ctx := ctxT(b)
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		if poolSize > 0 {
			for h.m.pooledCount() < poolSize {
				time.Sleep(100 * time.Microsecond)
			}
		}
		id := fmt.Sprintf("bench-%d", i)
		if timeSetup {
			b.StartTimer()
		}
		if _, err := h.m.Setup(ctx, id, Options{}); err != nil {
			b.Fatal(err)
		}
		if timeSetup {
			b.StopTimer()
		} else {
			b.StartTimer()
		}
		if err := h.m.Teardown(ctx, id); err != nil {
			b.Fatal(err)
		}
		if !timeSetup {
			b.StopTimer()
		}
	}
}
