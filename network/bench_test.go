//go:build linux

package network

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/mvm-dev/microvm/network/internal/nstest"
)

// BenchmarkSetup measures Setup and Teardown of one VM network, with and
// without the warm pool, with the on-disk FileStore ("registry": fsync per write) and
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

// BenchmarkSlotThroughput measures UDP packets per second through one
// slot: a stand-in guest sends 64-byte datagrams of one flow, with the
// default policy, to a sink upstream (through the slot's firewall, NAT,
// the host table and masquerade). ns/op is per datagram received.
func BenchmarkSlotThroughput(b *testing.B) {
	h := newHarness(b, nil)
	s, err := h.m.Setup(ctxT(b), "bench", Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.m.Teardown(ctxT(b), "bench")
	g := h.env.AttachGuest(s.NetNSPath, "bench")
	var sink, src net.PacketConn
	if err := netnsutil.DoPath(h.env.Up, func() (err error) {
		sink, err = net.ListenPacket("udp4", net.JoinHostPort(nstest.UpstreamIP, "7790"))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	if err := netnsutil.DoPath(g, func() (err error) {
		src, err = net.ListenPacket("udp4", ":0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst := &net.UDPAddr{IP: net.ParseIP(nstest.UpstreamIP), Port: 7790}
	payload := make([]byte, 64)
	// Warm up: neighbours resolved, conntrack entries made.
	warm := make([]byte, 2048)
	for i := 0; ; i++ {
		if i == 50 {
			b.Fatal("warm-up datagrams did not arrive")
		}
		src.WriteTo(payload, dst)
		sink.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := sink.ReadFrom(warm); err == nil {
			break
		}
	}
	got := make(chan int)
	go func() {
		buf := make([]byte, 2048)
		n := 0
		for {
			sink.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, _, err := sink.ReadFrom(buf); err != nil {
				got <- n
				return
			}
			n++
		}
	}()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		src.WriteTo(payload, dst)
	}
	n := <-got
	elapsed := time.Since(start) - 500*time.Millisecond
	b.StopTimer()
	if n == 0 {
		b.Fatal("no datagram arrived")
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "pkts/s")
	b.ReportMetric(100*float64(n)/float64(b.N), "%delivered")
}

// BenchmarkRename measures Rename of a VM network (two vm locks, a record
// written, the lease rewritten under the allocation lock, a record
// deleted; no kernel change), with the FileStore and an in-memory Store.
func BenchmarkRename(b *testing.B) {
	nstest.RequireRoot(b)
	for _, store := range []string{"registry", "mem"} {
		b.Run("store="+store, func(b *testing.B) {
			h := newHarness(b, func(c *Config) {
				if store == "mem" {
					c.Store = newMemStore()
				}
			})
			ctx := ctxT(b)
			h.setup("bench-0", Options{})
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := h.m.Rename(ctx, fmt.Sprintf("bench-%d", i), fmt.Sprintf("bench-%d", i+1)); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			h.teardown(fmt.Sprintf("bench-%d", b.N))
		})
	}
}
