//go:build linux

package uffd

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/mvm-dev/microvm/internal/uffdguest"
	"golang.org/x/sys/unix"
)

func TestParseRegions(t *testing.T) {
	const file = 64 * mib
	ok := []struct {
		json string
		want []Region
	}{
		{`[{"base_host_virt_addr":1073741824,"size":4194304,"offset":0,"page_size":4096,"page_size_kib":4096}]`,
			[]Region{{1 << 30, 4 * mib, 0, 4096}}},
		{`[{"base_host_virt_addr":1073741824,"size":4194304,"offset":0,"page_size_kib":2097152}]`,
			[]Region{{1 << 30, 4 * mib, 0, 2 * mib}}},
		{`[{"base_host_virt_addr":18446744073705357312,"size":4096,"offset":0}]`, // no page size: 4 KiB; near the top of u64
			[]Region{{18446744073705357312, 4096, 0, 4096}}},
		{`[{"base_host_virt_addr":4096,"size":8192,"offset":8192,"page_size":4096,"future_field":true},
		   {"base_host_virt_addr":1048576,"size":8192,"offset":0,"page_size":4096}]`,
			[]Region{{4096, 8192, 8192, 4096}, {1 << 20, 8192, 0, 4096}}},
	}
	for _, tc := range ok {
		got, err := parseRegions([]byte(tc.json), file)
		if err != nil {
			t.Errorf("parseRegions(%s) = %v", tc.json, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("parseRegions(%s) = %+v", tc.json, got)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("parseRegions(%s)[%d] = %+v, want %+v", tc.json, i, got[i], tc.want[i])
			}
		}
	}
	r := func(fields string) string { return "[{" + fields + "}]" }
	bad := []struct{ json, want string }{
		{``, "malformed region JSON"},
		{`{}`, "malformed region JSON"},
		{`[1]`, "malformed region JSON"},
		{`null`, "region list is empty"},
		{`[]`, "region list is empty"},
		{r(`"base_host_virt_addr":-1,"size":4096,"offset":0`), "malformed region JSON"},
		{r(`"size":4096,"offset":0`), "base_host_virt_addr is missing"},
		{r(`"base_host_virt_addr":0,"offset":0`), "size is missing"},
		{r(`"base_host_virt_addr":0,"size":4096`), "offset is missing"},
		{r(`"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4096,"page_size_kib":4`), "disagree"},
		{r(`"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":65536`), "must be 4096 or 2097152"},
		{r(`"base_host_virt_addr":0,"size":0,"offset":0`), "positive multiple of the page size"},
		{r(`"base_host_virt_addr":0,"size":6000,"offset":0`), "positive multiple of the page size"},
		{r(`"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":2097152`), "positive multiple of the page size 2097152"},
		{r(`"base_host_virt_addr":100,"size":4096,"offset":0`), "must be aligned"},
		{r(`"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0`), "not wrap"},
		{r(`"base_host_virt_addr":0,"size":4096,"offset":100`), "multiple of 4096"},
		{r(`"base_host_virt_addr":0,"size":67112960,"offset":0`), "exceeds the memory file size 67108864"},
		{r(`"base_host_virt_addr":0,"size":4096,"offset":18446744073709547520`), "exceeds the memory file size"},
		{`[{"base_host_virt_addr":0,"size":8192,"offset":0},{"base_host_virt_addr":4096,"size":4096,"offset":8192}]`, "overlap in guest address"},
		{`[{"base_host_virt_addr":0,"size":8192,"offset":0},{"base_host_virt_addr":65536,"size":4096,"offset":4096}]`, "overlap in memory file"},
	}
	for _, tc := range bad {
		_, err := parseRegions([]byte(tc.json), file)
		if !errors.Is(err, ErrBadHandshake) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseRegions(%s) = %v, want ErrBadHandshake mentioning %q", tc.json, err, tc.want)
		}
	}
}

func TestJSONIncomplete(t *testing.T) {
	for s, want := range map[string]bool{
		`[{"a":1`: true, `[`: true, `[{"a":1}]`: false, `]`: false, `[{"a":1}]x`: false, `[{"a":tru`: true, `[{"a"x`: false,
	} {
		if got := jsonIncomplete([]byte(s)); got != want {
			t.Errorf("jsonIncomplete(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestHoles(t *testing.T) {
	holes := []extent{{0, 4096}, {10000, 20480}, {1 << 20, 3 << 20}}
	b := holePages(holes, 0, 4<<20, 12)
	for _, tc := range []struct {
		page uint64
		want bool
	}{{0, true}, {1, false}, {2, false}, {3, true}, {4, true}, {5, false}, {256, true}, {767, true}, {768, false}} {
		if got := b.get(tc.page); got != tc.want {
			t.Errorf("4K page %d hole = %v, want %v", tc.page, got, tc.want)
		}
	}
	h := holePages([]extent{{1 << 20, 3 << 20}, {4 << 20, 6<<20 + 4096}}, 0, 8<<20, 21)
	if h.get(0) || h.get(1) || !h.get(2) || h.get(3) {
		t.Errorf("2M holes: %v %v %v %v", h.get(0), h.get(1), h.get(2), h.get(3))
	}
	if holePages(holes, 4<<20, 4<<20, 12) != nil {
		t.Error("region past the holes has hole pages")
	}
	// Real file.
	{
		mf := makeMemFile(t, 4*mib, extent{mib, 2 * mib}, extent{3 * mib, 4 * mib})
		fd, err := unix.Open(mf, unix.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		got, err := fileHoles(fd, 4*mib)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0] != (extent{mib, 2 * mib}) || got[1] != (extent{3 * mib, 4 * mib}) {
			t.Errorf("fileHoles = %v", got) // file systems may round; ext4 and tmpfs do not here
		}
	}
}

func TestBitmap(t *testing.T) {
	b := newBitmap(200)
	b.setRange(3, 130)
	b.set(199)
	if b.get(2) || !b.get(3) || !b.get(132) || b.get(133) || !b.get(199) || b.count() != 131 {
		t.Errorf("bitmap wrong: count %d", b.count())
	}
}

// sendRaw connects to sock and sends parts one by one, the first with fd.
func sendRaw(t *testing.T, sock string, fd int, parts ...string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for i, p := range parts {
		var oob []byte
		if i == 0 && fd >= 0 {
			oob = unix.UnixRights(fd)
		}
		if _, _, err := c.WriteMsgUnix([]byte(p), oob, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond)
	}
	return c
}

func initialisedUffd(t *testing.T) int {
	t.Helper()
	fd, err := uffdguest.NewUserfaultfd()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	api := [3]uint64{0xAA, 0, 0}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), 0xc018aa3f, uintptr(unsafe.Pointer(&api))); e != 0 {
		t.Fatal(e)
	}
	return fd
}

func TestHandshakeRaw(t *testing.T) {
	skipUnlessUFFD(t)
	const msg = `[{"base_host_virt_addr":1073741824,"size":1048576,"offset":0,"page_size":4096}]`
	t.Run("message in pieces", func(t *testing.T) {
		s := startServer(t, Config{MemFile: makeMemFile(t, mib)})
		c := sendRaw(t, s.cfg.SocketPath, initialisedUffd(t), msg[:20], msg[20:50], msg[50:])
		select {
		case <-s.Ready():
		case err := <-s.errc:
			t.Fatalf("Serve = %v", err)
		}
		c.Close()
		if err := s.wait(t); err != nil {
			t.Fatalf("Serve after hang-up = %v", err)
		}
	})
	for _, tc := range []struct {
		name string
		fd   func() int
		want string
	}{
		{"uninitialised uffd", func() int {
			fd, _ := uffdguest.NewUserfaultfd()
			t.Cleanup(func() { unix.Close(fd) })
			return fd
		}, "not initialised"},
		{"not a uffd", func() int {
			f, _ := os.Open(os.DevNull)
			t.Cleanup(func() { f.Close() })
			return int(f.Fd())
		}, "not a userfaultfd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, Config{MemFile: makeMemFile(t, mib)})
			sendRaw(t, s.cfg.SocketPath, tc.fd(), msg)
			if err := s.wait(t); !errors.Is(err, ErrBadHandshake) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Serve = %v, want ErrBadHandshake mentioning %q", err, tc.want)
			}
		})
	}
	t.Run("silent peer", func(t *testing.T) {
		s := startServer(t, Config{MemFile: makeMemFile(t, mib), AcceptTimeout: 200 * time.Millisecond})
		sendRaw(t, s.cfg.SocketPath, -1)
		if err := s.wait(t); !errors.Is(err, ErrAcceptTimeout) || !strings.Contains(err.Error(), "sent no complete handshake") {
			t.Fatalf("Serve = %v, want ErrAcceptTimeout", err)
		}
	})
}

func TestFindBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, BinaryName)
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	t.Setenv(EnvBinary, bin)
	if got, err := FindBinary(); err != nil || got != bin {
		t.Errorf("FindBinary with $%s = %q, %v", EnvBinary, got, err)
	}
	t.Setenv(EnvBinary, filepath.Join(dir, "missing"))
	if _, err := FindBinary(); !errors.Is(err, ErrBinaryNotFound) {
		t.Errorf("FindBinary with a missing $%s = %v", EnvBinary, err)
	}
	t.Setenv(EnvBinary, "")
	exe, _ := os.Executable()
	if checkExecutable(filepath.Join(filepath.Dir(exe), BinaryName)) == nil {
		t.Skip("an mvm-uffd lies next to the test binary; cannot test the $PATH lookup")
	}
	t.Setenv("PATH", dir)
	if got, err := FindBinary(); err != nil || got != bin {
		t.Errorf("FindBinary on $PATH = %q, %v", got, err)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := FindBinary(); !errors.Is(err, ErrBinaryNotFound) {
		t.Errorf("FindBinary with nothing around = %v", err)
	}
}
