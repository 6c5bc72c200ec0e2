//go:build linux && amd64

package oci_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/mvm-dev/microvm/agent"
	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/image/oci"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

// TestBootOCIQEMU builds an image from an OCI layout (the two layers of
// twoLayers plus a payload) with the agent injected, gives it a grown
// per-VM clone, boots the clone with the project's kernel under QEMU's
// emulator and asks the agent in the guest: it is PID 1, reads the payload
// the OCI layer put there, and cannot read the file a whiteout deleted.
func TestBootOCIQEMU(t *testing.T) {
	guesttest.RequireImageTools(t)
	kernel := guesttest.Kernel(t)
	img, err := mutate.AppendLayers(twoLayers(t), layer(t, ent{name: "srv/payload", body: strings.Repeat("p", 16384)}))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tpl := filepath.Join(dir, "template.ext4")
	if _, err := oci.Build(ctxT(t), writeLayout(t, img), tpl, oci.Options{}, image.BuildOptions{Agent: guesttest.Agent(t)}); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "vm.ext4")
	if _, err := image.Clone(ctxT(t), tpl, disk, image.CloneOptions{SizeBytes: 128 << 20}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	q := guesttest.StartQEMU(ctx, t, kernel, "console=ttyS0 root=/dev/vda rw panic=1 reboot=k",
		"-drive", "id=root,file="+disk+",format=raw,if=none", "-device", "virtio-blk-pci,drive=root")
	out := q.Console
	if err := guesttest.WaitFor(ctx, func() bool { return strings.Contains(out.String(), agent.ReadyMarker) }); err != nil {
		t.Fatalf("no ready marker: %v", err)
	}
	t.Logf("QEMU (TCG) start to %q: %s", agent.ReadyMarker, time.Since(start).Round(time.Millisecond))
	c := q.Agent
	p, err := c.Ping(ctx)
	if err != nil || p.PID != 1 {
		t.Fatalf("ping = %+v, %v; want the agent as PID 1", p, err)
	}
	r, err := c.Read(ctx, agent.ReadArgs{Path: "/srv/payload", Bytes: 1 << 20})
	if err != nil || r.Bytes != 16384 {
		t.Errorf("read /srv/payload = %+v, %v; want 16384 bytes", r, err)
	}
	if r, err := c.Read(ctx, agent.ReadArgs{Path: "/etc/gone", Bytes: 4096}); err == nil {
		t.Errorf("read /etc/gone (whited out) = %+v, want an error", r)
	}
	if err := c.Poweroff(ctx); err != nil {
		t.Fatalf("poweroff: %v", err)
	}
	select {
	case <-q.Done():
	case <-time.After(90 * time.Second):
		t.Fatal("qemu did not exit within 90s of poweroff")
	}
	// The template was not touched by the guest.
	fsck(t, tpl)
}
