package server

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// startInNetns starts the stand-in inside a fresh network namespace that
// holds a persistent TAP named tap.
func startInNetns(t *testing.T, tap string) *proc {
	t.Helper()
	return startInNetnsWith(t, func() error {
		la := netlink.NewLinkAttrs()
		la.Name = tap
		return netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: la, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR})
	})
}

// startInNetnsWith runs setup inside a fresh network namespace, then starts
// the stand-in there.
func startInNetnsWith(t *testing.T, setup func() error) *proc {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace and a TAP")
	}
	fcstandin.Build(t) // build outside the namespace-locked section
	var p *proc
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		restore := func() {
			if err := netns.Set(orig); err == nil {
				runtime.UnlockOSThread()
			} // else: the thread dies with the goroutine
		}
		defer restore()
		if err := setup(); err != nil {
			errc <- err
			return
		}
		p = startFC(t, startOpt{noWait: true}) // the child inherits this thread's netns
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Skipf("cannot set up a netns with a TAP: %v", err)
	}
	p.waitSocket()
	return p
}

func TestTapOpenedForReal(t *testing.T) {
	p := startInNetns(t, "fcstap0")
	p.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcstap0","guest_mac":"06:00:AC:10:00:02"}`)
	// Re-PUT of the same interface reopens the TAP.
	p.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcstap0","guest_mac":"06:00:AC:10:00:02"}`)
	p.fails("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"fcstap0"}`, "Resource busy (os error 16)")
	p.fails("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"lo"}`, "Invalid TUN/TAP Backend provided by lo")
	p.fails("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"a-name-far-too-long-for-linux"}`, "Invalid interface name")
	p.fails("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tapx","guest_mac":"06:00:ac:10:00:02"}`, "The MAC address is already in use")
	p.ok("PUT", "/mmds/config", `{"network_interfaces":["eth0"],"version":"V2"}`)
	p.fails("PUT", "/mmds/config", `{"network_interfaces":["eth0"],"ipv4_address":"10.0.0.1"}`, "not link local")
	bootMinimal(t, p)
	p.ok("PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0","rx_rate_limiter":{"bandwidth":{"size":0,"refill_time":0}}}`)
	p.fails("PUT", "/network-interfaces/eth2", `{"iface_id":"eth2","host_dev_name":"fcstap0"}`, fcstandin.MsgPostBoot)
}

func TestTapOverrideOnLoad(t *testing.T) {
	p := startInNetns(t, "fcstap1")
	p.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"fcstap1"}`)
	bootMinimal(t, p)
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	dir := shortDir(t)
	st, mem := filepath.Join(dir, "s"), filepath.Join(dir, "m")
	p.ok("PUT", "/snapshot/create", `{"snapshot_path":`+jsonStr(st)+`,"mem_file_path":`+jsonStr(mem)+`}`)
	// Where fcstap1 is busy (another process holds it), the restore fails,
	// fatally; with network_overrides pointing at a free TAP it works.
	busyAndTap := func(tap string) func() error {
		return func() error {
			f, msg := openTap("fcstap1", false) // creates it (we are root) and holds it
			if msg != "" {
				return errors.New(msg)
			}
			t.Cleanup(func() { f.Close() })
			if tap == "" {
				return nil
			}
			ta := netlink.NewLinkAttrs()
			ta.Name = tap
			return netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: ta, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR})
		}
	}
	q := startInNetnsWith(t, busyAndTap(""))
	q.fails("PUT", "/snapshot/load", `{"snapshot_path":`+jsonStr(st)+`,"mem_file_path":`+jsonStr(mem)+`,"vsock_override":{"uds_path":"q.sock"}}`, "Resource busy (os error 16)")
	if q.wait(10*time.Second).ExitCode() != 1 {
		t.Fatal("failed load did not exit 1")
	}
	// With network_overrides pointing at a real TAP it works.
	r := startInNetnsWith(t, busyAndTap("fcstap9"))
	r.ok("PUT", "/snapshot/load", `{"snapshot_path":`+jsonStr(st)+`,"mem_file_path":`+jsonStr(mem)+`,"network_overrides":[{"iface_id":"eth0","host_dev_name":"fcstap9"}],"resume_vm":true}`)
	var cfg map[string]any
	json.Unmarshal([]byte(r.ok("GET", "/vm/config", "")), &cfg)
	if n := cfg["network-interfaces"].([]any)[0].(map[string]any); n["host_dev_name"] != "fcstap9" {
		t.Fatalf("override not applied: %v", n)
	}
}

// uffdServe is a minimal UFFD page server: it accepts Firecracker's
// handshake and serves every missing-page fault from mem.
func uffdServe(t *testing.T, ln *net.UnixListener, mem []byte, got chan<- []map[string]any, stop <-chan struct{}) {
	c, err := ln.AcceptUnix()
	if err != nil {
		return
	}
	defer c.Close()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Error(err)
		return
	}
	var regions []map[string]any
	if err := json.Unmarshal(buf[:n], &regions); err != nil {
		t.Errorf("handshake %q: %v", buf[:n], err)
		return
	}
	got <- regions
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	if len(msgs) != 1 {
		t.Errorf("want one control message, got %d", len(msgs))
		return
	}
	fds, _ := unix.ParseUnixRights(&msgs[0])
	if len(fds) != 1 {
		t.Errorf("want one fd, got %d", len(fds))
		return
	}
	uffd := fds[0]
	defer unix.Close(uffd)
	base := uint64(regions[0]["base_host_virt_addr"].(float64))
	ev := make([]byte, 32)
	for {
		pfd := []unix.PollFd{{Fd: int32(uffd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 20); err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if pfd[0].Revents == 0 {
			select {
			case <-stop:
				return
			default:
				continue
			}
		}
		if _, err := unix.Read(uffd, ev); err != nil {
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			return
		}
		if ev[0] != 0x12 { // UFFD_EVENT_PAGEFAULT
			continue
		}
		addr := binary.LittleEndian.Uint64(ev[16:]) &^ (pageSize - 1)
		off := addr - base
		src := mem[off : off+pageSize]
		cp := struct {
			dst, src, len, mode uint64
			copy                int64
		}{addr, uint64(uintptr(unsafe.Pointer(&src[0]))), pageSize, 0, 0}
		const uffdioCopy = 0xc028aa03
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(uffd), uffdioCopy, uintptr(unsafe.Pointer(&cp))); e != 0 && e != unix.EEXIST {
			t.Errorf("UFFDIO_COPY at %#x: %v", addr, e)
			return
		}
		runtime.KeepAlive(src)
	}
}

func TestSnapshotLoadUffd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for userfaultfd")
	}
	p := startFC(t, startOpt{})
	p.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":16}`)
	bootMinimal(t, p)
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	dir := shortDir(t)
	st, memPath := filepath.Join(dir, "s"), filepath.Join(dir, "m")
	p.ok("PUT", "/snapshot/create", `{"snapshot_path":`+jsonStr(st)+`,"mem_file_path":`+jsonStr(memPath)+`}`)
	mem, err := os.ReadFile(memPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		mem        []byte
	}{{"good", "", mem}, {"wrong pages", "does not match the snapshot", make([]byte, len(mem))}} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(dir, tc.name[:4]+".uffd")
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan []map[string]any, 1)
			stop, done := make(chan struct{}), make(chan struct{})
			go func() { defer close(done); uffdServe(t, ln, tc.mem, got, stop) }()
			defer func() { ln.Close(); close(stop); <-done }()
			q := startFC(t, startOpt{})
			body := `{"snapshot_path":` + jsonStr(st) + `,"mem_backend":{"backend_type":"Uffd","backend_path":` + jsonStr(sock) + `},"vsock_override":{"uds_path":` + jsonStr(filepath.Join(dir, tc.name[:4]+".vsock")) + `},"resume_vm":true}`
			if tc.want == "" {
				q.ok("PUT", "/snapshot/load", body)
			} else {
				q.fails("PUT", "/snapshot/load", body, tc.want)
			}
			regions := <-got
			r := regions[0]
			if len(regions) != 1 || r["size"].(float64) != 16<<20 || r["offset"].(float64) != 0 || r["page_size"].(float64) != 4096 || r["page_size_kib"].(float64) != 4096 {
				t.Fatalf("handshake regions: %v", regions)
			}
			if tc.want == "" && !strings.Contains(q.ok("GET", "/", ""), "Running") {
				t.Fatal("not running after Uffd load")
			}
			q.cmd.Process.Kill()
		})
	}
}
