//go:build linux

package uffdguest

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func skipUnlessUFFD(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("userfaultfd tests need root")
	}
	fd, err := NewUserfaultfd()
	if err != nil {
		t.Skipf("userfaultfd unusable: %v", err)
	}
	unix.Close(fd)
}

// receive accepts one connection on ln and returns the message and fds.
func receive(t *testing.T, ln *net.UnixListener) ([]byte, []int, *net.UnixConn) {
	t.Helper()
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for i := range msgs {
			f, err := unix.ParseUnixRights(&msgs[i])
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, f...)
		}
	}
	return buf[:n], fds, c
}

func TestHandshakeWireFormats(t *testing.T) {
	skipUnlessUFFD(t)
	for _, tc := range []struct {
		name     string
		wire     WireFormat
		want     []string
		wantNone []string
	}{
		{"current", WireCurrent, []string{`"page_size":4096`, `"page_size_kib":4096`}, nil},
		{"kib", WirePageSizeKiB, []string{`"page_size_kib":4096`}, []string{`"page_size":`}},
		{"none", WireNoPageSize, nil, []string{"page_size"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "uffd.sock")
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			done := make(chan *Guest, 1)
			go func() {
				g, err := Connect(context.Background(), sock, 4<<20, PageSize4K, WithWireFormat(tc.wire), WithRegions(1<<20, 3<<20))
				if err != nil {
					t.Error(err)
				}
				done <- g
			}()
			msg, fds, c := receive(t, ln)
			defer c.Close()
			g := <-done
			if g == nil {
				return
			}
			defer g.Close()
			if len(fds) != 1 {
				t.Fatalf("got %d fds, want 1", len(fds))
			}
			defer unix.Close(fds[0])
			link, _ := os.Readlink("/proc/self/fd/" + itoa(fds[0]))
			if !strings.Contains(link, "userfaultfd") {
				t.Errorf("fd is %q, want a userfaultfd", link)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(msg), w) {
					t.Errorf("handshake %s lacks %s", msg, w)
				}
			}
			for _, w := range tc.wantNone {
				if strings.Contains(string(msg), w) {
					t.Errorf("handshake %s contains %s", msg, w)
				}
			}
			var regs []struct {
				Base   uint64 `json:"base_host_virt_addr"`
				Size   uint64 `json:"size"`
				Offset uint64 `json:"offset"`
			}
			if err := json.Unmarshal(msg, &regs); err != nil {
				t.Fatal(err)
			}
			if len(regs) != 2 || regs[0].Size != 1<<20 || regs[1].Offset != 1<<20 || regs[1].Base != regs[0].Base+1<<20 {
				t.Errorf("regions %+v", regs)
			}
			if got := g.Regions(); len(got) != 2 || got[1].Offset != 1<<20 {
				t.Errorf("Regions() = %+v", got)
			}
			if g.Features()&FeatureEventRemove == 0 {
				t.Errorf("features %#x lack EVENT_REMOVE", g.Features())
			}
		})
	}
}

func TestWithoutFDAndRaw(t *testing.T) {
	skipUnlessUFFD(t)
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		g, err := Connect(context.Background(), sock, 1<<20, PageSize4K, WithoutFD(), WithRawHandshake([]byte("nope")))
		if err != nil {
			t.Error(err)
			return
		}
		time.Sleep(100 * time.Millisecond)
		g.Close()
	}()
	msg, fds, c := receive(t, ln)
	c.Close()
	if string(msg) != "nope" || len(fds) != 0 {
		t.Errorf("got %q with %d fds", msg, len(fds))
	}
}

func TestBadArgs(t *testing.T) {
	for _, tc := range []struct {
		mem  int64
		page int
		opts []Option
	}{
		{1 << 20, 8192, nil},
		{1000, PageSize4K, nil},
		{1 << 20, PageSize4K, []Option{WithRegions(4096)}},
	} {
		if _, err := Connect(context.Background(), "/nonexistent", tc.mem, tc.page, tc.opts...); err == nil {
			t.Errorf("Connect(%d, %d) succeeded", tc.mem, tc.page)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
