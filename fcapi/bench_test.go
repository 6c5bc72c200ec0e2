package fcapi

import (
	"context"
	"testing"
)

// BenchmarkPutRoundTrip measures one PUT (encode, send over the unix
// socket, 204, close) against the in-test server on a kept-alive
// connection.
func BenchmarkPutRoundTrip(b *testing.B) {
	fs := newFakeServer(b)
	fs.mu.Lock()
	fs.record = false
	fs.mu.Unlock()
	c := fs.client(b, nil)
	ctx := context.Background()
	d := Drive{DriveID: "rootfs", PathOnHost: "/var/lib/mvm/images/rootfs.ext4", IsRootDevice: true}
	if err := c.PutDrive(ctx, d); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := c.PutDrive(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetRoundTrip measures one GET /machine-config with JSON
// decoding.
func BenchmarkGetRoundTrip(b *testing.B) {
	fs := newFakeServer(b)
	fs.mu.Lock()
	fs.record = false
	fs.mu.Unlock()
	fs.setReply("GET /machine-config", 200, `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`)
	c := fs.client(b, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MachineConfig(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
