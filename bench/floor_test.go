package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// floorLauncher is the lower bound either library could reach against
// the stand-in: exec the process, learn that its socket exists from
// inotify (no polling delay), then send only the configuration requests
// (PUT /machine-config, /boot-source, /drives/rootfs, and PUT /actions
// InstanceStart when booting) over one keep-alive connection, with no
// readiness probe, no records and no logger/metrics set-up. It is not a
// usable runtime (no supervision, no error recovery); it shows how much
// of each implementation's time is the stand-in itself.
type floorLauncher struct {
	e   *benchEnv
	dir string
}

func openFloor(b *testing.B, e *benchEnv) launcher {
	dir, err := os.MkdirTemp(e.scratch, "floor")
	if err != nil {
		b.Fatal(err)
	}
	return &floorLauncher{e: e, dir: dir}
}

func (f *floorLauncher) close() error { return os.RemoveAll(f.dir) }

func (f *floorLauncher) launch(ctx context.Context, id string, boot bool) (func() error, error) {
	sock := filepath.Join(f.dir, id+".sock")
	// Watch before spawning so the socket's creation cannot be missed.
	// Every VM's socket lands in the same directory: an event may be
	// another VM's, so each wake-up re-checks our path.
	in, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	// Closing an inotify instance waits for an SRCU grace period
	// (fsnotify_destroy_group -> synchronize_srcu), 10-20 ms here: do it
	// off the launch path.
	defer func() { go unix.Close(in) }()
	if _, err := unix.InotifyAddWatch(in, f.dir, unix.IN_CREATE); err != nil {
		return nil, fmt.Errorf("inotify watch: %w", err)
	}
	cmd := exec.Command(f.e.bin, "--api-sock", sock, "--id", id, "--no-seccomp")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var tr *http.Transport
	teardown := func() error {
		if tr != nil {
			tr.CloseIdleConnections()
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			return fmt.Errorf("floor %s: no exit 10 s after SIGTERM", id)
		}
		if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	buf := make([]byte, 4096)
	deadline := time.Now().Add(readyTimeout)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-exited:
			exited <- err // for teardown
			return teardown, fmt.Errorf("floor %s: exited before its socket appeared: %v", id, err)
		default:
		}
		if time.Now().After(deadline) {
			return teardown, fmt.Errorf("floor %s: no socket within %s", id, readyTimeout)
		}
		// Sleeps until something is created in the directory (or 50 ms
		// pass, to notice an early exit).
		pfd := []unix.PollFd{{Fd: int32(in), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 50); err != nil && !errors.Is(err, unix.EINTR) {
			return teardown, fmt.Errorf("inotify poll: %w", err)
		} else if n > 0 {
			unix.Read(in, buf)
		}
	}
	tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			// bind() creates the file just before listen(): retry a
			// refused connect briefly.
			for i := 0; ; i++ {
				c, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
				if err == nil || i == 100 || !errors.Is(err, syscall.ECONNREFUSED) {
					return c, err
				}
				time.Sleep(100 * time.Microsecond)
			}
		},
		MaxIdleConnsPerHost: 1,
	}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	put := func(path, body string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://localhost"+path, bytes.NewReader([]byte(body)))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("floor %s: PUT %s: %w", id, path, err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			return fmt.Errorf("floor %s: PUT %s: %s: %s", id, path, resp.Status, msg)
		}
		return nil
	}
	reqs := [][2]string{
		{"/machine-config", fmt.Sprintf(`{"vcpu_count":%d,"mem_size_mib":%d,"smt":false}`, benchVCPUs, benchMemoryMiB)},
		{"/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":%q}`, f.e.kernel, bootArgs)},
		{"/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, f.e.rootfs)},
	}
	if boot {
		reqs = append(reqs, [2]string{"/actions", `{"action_type":"InstanceStart"}`})
	}
	for _, r := range reqs {
		if err := put(r[0], r[1]); err != nil {
			return teardown, err
		}
	}
	return teardown, nil
}
