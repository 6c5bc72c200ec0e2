//go:build linux && amd64

package image_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/agent"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

// TestBootQEMU boots the agent image with the project's guest kernel under
// QEMU's emulator (no KVM needed) and checks, with real guest code on a
// real kernel: the ready marker; the counter over the serial console (1
// then 2); eth0 configured from ip= (a TCP round trip from the guest to the
// host through QEMU's user network, via the default route); the metadata
// op against a V2 metadata service; O_DIRECT reads of a second drive; and
// a clean shutdown that ends QEMU by itself (-no-reboot).
func TestBootQEMU(t *testing.T) {
	kernel := guesttest.Kernel(t)
	img := guesttest.Image(t)
	data := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(data, bytes.Repeat([]byte{0xa5}, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}

	// Host services the guest reaches at 10.0.2.2 (QEMU's user network
	// maps it to the host's loopback).
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	peers := make(chan string, 4)
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			peers <- c.RemoteAddr().String()
			fmt.Fprintf(c, "pong %s", line)
			c.Close()
		}
	}()
	mmds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			io.WriteString(w, "guest-token")
		case r.Method == http.MethodGet && r.Header.Get("X-metadata-token") == "guest-token" && r.URL.Path == "/mvm/network":
			io.WriteString(w, `{"ip":"10.0.2.15"}`)
		default:
			http.Error(w, "no", http.StatusUnauthorized)
		}
	}))
	defer mmds.Close()
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	q := guesttest.StartQEMU(ctx, t, kernel,
		"console=ttyS0 root=/dev/vda rw panic=1 reboot=k ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off",
		"-drive", "id=root,file="+img+",format=raw,if=none", "-device", "virtio-blk-pci,drive=root",
		"-drive", "id=data,file="+data+",format=raw,if=none,readonly=on", "-device", "virtio-blk-pci,drive=data",
		"-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
	)
	con := q.Console

	if err := guesttest.WaitFor(ctx, func() bool { return strings.Contains(con.String(), agent.ReadyMarker) }); err != nil {
		t.Fatalf("no ready marker: %v", err)
	}
	t.Logf("QEMU (TCG) start to %q: %s", agent.ReadyMarker, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(con.String(), agent.ReadyMarker+" "+guesttest.AgentVersion) {
		t.Errorf("ready marker without the version %q", guesttest.AgentVersion)
	}
	c := q.Agent
	for want := uint64(1); want <= 2; want++ {
		v, err := c.Counter(ctx)
		if err != nil || v != want {
			t.Fatalf("counter = %d, %v; want %d", v, err, want)
		}
	}
	p, err := c.Ping(ctx)
	if err != nil || p.PID != 1 || p.Version != guesttest.AgentVersion {
		t.Fatalf("ping = %+v, %v; want the agent as PID 1", p, err)
	}
	if !strings.Contains(con.String(), "mvm-agent: network: eth0 up with 10.0.2.15/24, default via 10.0.2.2") {
		t.Errorf("the agent did not report eth0 configured from ip=")
	}
	d, err := c.Dial(ctx, agent.DialArgs{Addr: "10.0.2.2:" + port(echo.Addr().String()), Send: "ping\n", Recv: true, TimeoutMS: 20000})
	if err != nil || !d.OK || d.Reply != "pong ping" || !strings.HasPrefix(d.Local, "10.0.2.15:") {
		t.Fatalf("dial from the guest = %+v, %v; want a reply from 10.0.2.15", d, err)
	}
	<-peers
	m, err := c.MMDS(ctx, agent.MMDSArgs{Path: "/mvm/network", Addr: "10.0.2.2:" + port(mmds.Listener.Addr().String()), TimeoutMS: 20000})
	if err != nil || m.Status != 200 || m.Body != `{"ip":"10.0.2.15"}` {
		t.Fatalf("mmds from the guest = %+v, %v", m, err)
	}
	r, err := c.Read(ctx, agent.ReadArgs{Path: "/dev/vdb", Bytes: 16 << 20})
	if err != nil || r.Bytes != 8<<20 || !r.Direct {
		t.Fatalf("read /dev/vdb = %+v, %v; want 8 MiB with O_DIRECT", r, err)
	}
	if err := c.Poweroff(ctx); err != nil {
		t.Fatalf("poweroff: %v", err)
	}
	select {
	case <-q.Done():
		if err := q.Err(); err != nil {
			t.Errorf("qemu exited with %v, want status 0 (guest reset, -no-reboot)", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("qemu did not exit within 90s of poweroff")
	}
	log := con.String()
	for _, want := range []string{agent.ShutdownMarker + " (poweroff request)", "reboot: Restarting system"} {
		if !strings.Contains(log, want) {
			t.Errorf("console has no %q", want)
		}
	}
	t.Logf("QEMU (TCG) start to exit: %s", time.Since(start).Round(time.Millisecond))
	if os.Getenv("MVM_SHOW_CONSOLE") != "" {
		t.Logf("guest console:\n%s", log)
	}
}
