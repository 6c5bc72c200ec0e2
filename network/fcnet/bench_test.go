//go:build linux

package fcnet_test

import (
	"fmt"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/network/fcnet"
)

// BenchmarkAttach measures the network step of a Create: Attach through
// the adapter (network.Manager.Setup with the on-disk FileStore, plus the
// attachment), with a cold Manager (pool=0: the slot is built) and with a
// warm pool (pool=4: a pre-built slot is claimed). The timer is stopped
// while the pool refills and during Detach. Run with -benchtime=30x or so:
// each iteration waits for a refill.
func BenchmarkAttach(b *testing.B) {
	for _, pool := range []int{0, 4} {
		b.Run(fmt.Sprintf("pool=%d", pool), func(b *testing.B) {
			w := newWorld(b, pool)
			n := fcnet.New(w.m)
			ctx := ctxT(b)
			nic := microvm.NetworkInterface{ID: "eth0"}
			b.ResetTimer()
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				waitWarm(b, w, pool)
				id := fmt.Sprintf("bench-%d", i)
				b.StartTimer()
				if _, err := n.Attach(ctx, id, nic); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := n.Detach(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCreate measures Create of a VM through the Firecracker runtime
// and the stand-in, without a network, with a managed interface on a cold
// Manager, and with a warm pool; the difference is the network step as
// Create sees it (attach, spawning in the namespace, the extra record
// write and API calls). Destroy and pool refills are not timed.
func BenchmarkCreate(b *testing.B) {
	for _, c := range []struct {
		name    string
		managed bool
		pool    int
	}{{"net=none", false, 0}, {"net=managed/pool=0", true, 0}, {"net=managed/pool=4", true, 4}} {
		b.Run(c.name, func(b *testing.B) {
			w := newWorld(b, c.pool)
			ctx := ctxT(b)
			spec := testSpec(b)
			if !c.managed {
				spec.Network = nil
			}
			b.ResetTimer()
			b.StopTimer()
			for i := 0; i < b.N; i++ {
				waitWarm(b, w, c.pool)
				id := fmt.Sprintf("bench-%d", i)
				b.StartTimer()
				if _, err := w.rt.Create(ctx, id, spec); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if _, err := w.rt.Destroy(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// waitWarm waits until the warm pool holds want slots.
func waitWarm(b *testing.B, w *world, want int) {
	deadline := time.Now().Add(30 * time.Second)
	for want > 0 && warmSlots(b, w.reg) < want {
		if time.Now().After(deadline) {
			b.Fatalf("the warm pool did not refill to %d slots in 30s", want)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// BenchmarkRename measures Rename of a created VM through the Firecracker
// runtime (its process lives on), without a network and with a managed
// one (its slot moves with it: network.Manager.Rename's three Store
// writes on top of the runtime's records).
func BenchmarkRename(b *testing.B) {
	for _, managed := range []bool{false, true} {
		b.Run(fmt.Sprintf("managed=%v", managed), func(b *testing.B) {
			w := newWorld(b, 0)
			ctx := ctxT(b)
			spec := testSpec(b)
			if !managed {
				spec.Network = nil
			}
			if _, err := w.rt.Create(ctx, "bench-0", spec); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := w.rt.Rename(ctx, fmt.Sprintf("bench-%d", i), fmt.Sprintf("bench-%d", i+1)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
