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

// floorLauncher is the lower bound any client could reach: exec the
// process, learn that its socket exists from inotify (no polling delay),
// then send only the API calls an operation needs (create: PUT
// /machine-config, /boot-source, /drives/rootfs, and PUT /actions
// InstanceStart when booting) over one keep-alive connection, with no
// readiness probe, no records, no files and no logger/metrics set-up.
// Teardown is SIGKILL and a wait. It is not a usable runtime (no
// supervision, no error recovery); it shows how much of each
// implementation's time is firecracker itself.
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

// floorVM is one process, its exit and its API connection.
type floorVM struct {
	id     string
	sock   string
	cmd    *exec.Cmd
	exited chan error // receives cmd.Wait's result once
	tr     *http.Transport
	client *http.Client
}

// spawn starts a firecracker and waits, through inotify, for its socket.
func (f *floorLauncher) spawn(id string) (*floorVM, error) {
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
	vm := &floorVM{id: id, sock: sock, exited: make(chan error, 1)}
	vm.cmd = exec.Command(f.e.bin, "--api-sock", sock, "--id", id, "--no-seccomp")
	if err := vm.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { vm.exited <- vm.cmd.Wait() }()
	buf := make([]byte, 4096)
	deadline := time.Now().Add(readyTimeout)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-vm.exited:
			vm.exited <- err // for destroy
			return vm, fmt.Errorf("floor %s: exited before its socket appeared: %v", id, err)
		default:
		}
		if time.Now().After(deadline) {
			return vm, fmt.Errorf("floor %s: no socket within %s", id, readyTimeout)
		}
		// Sleeps until something is created in the directory (or 50 ms
		// pass, to notice an early exit).
		pfd := []unix.PollFd{{Fd: int32(in), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 50); err != nil && !errors.Is(err, unix.EINTR) {
			return vm, fmt.Errorf("inotify poll: %w", err)
		} else if n > 0 {
			unix.Read(in, buf)
		}
	}
	vm.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			// bind() creates the file just before listen(): retry a
			// refused connect (up to readyTimeout).
			for t0 := time.Now(); ; {
				c, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
				if err == nil || time.Since(t0) > readyTimeout || !errors.Is(err, syscall.ECONNREFUSED) {
					return c, err
				}
				time.Sleep(100 * time.Microsecond)
			}
		},
		MaxIdleConnsPerHost: 1,
	}
	vm.client = &http.Client{Transport: vm.tr, Timeout: 30 * time.Second}
	return vm, nil
}

func (f *floorLauncher) create(ctx context.Context, id string, boot bool) (benchVM, error) {
	vm, err := f.spawn(id)
	if err != nil {
		return vmOrNil(vm), err
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
		if err := vm.call(ctx, http.MethodPut, r[0], r[1]); err != nil {
			return vm, err
		}
	}
	return vm, nil
}

func (f *floorLauncher) restore(ctx context.Context, id string, snap snapshotRef) (benchVM, error) {
	vm, err := f.spawn(id)
	if err != nil {
		return vmOrNil(vm), err
	}
	return vm, vm.call(ctx, http.MethodPut, "/snapshot/load", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q,"resume_vm":true}`,
		filepath.Join(snap.dir, "state"), filepath.Join(snap.dir, "mem")))
}

// vmOrNil keeps a typed nil *floorVM from becoming a non-nil benchVM.
func vmOrNil(vm *floorVM) benchVM {
	if vm == nil {
		return nil
	}
	return vm
}

// call sends one request on the VM's keep-alive connection and expects
// 204 No Content.
func (v *floorVM) call(ctx context.Context, method, path, body string) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, bytes.NewReader([]byte(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return fmt.Errorf("floor %s: %s %s: %w", v.id, method, path, err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("floor %s: %s %s: %s: %s", v.id, method, path, resp.Status, msg)
	}
	return nil
}

func (v *floorVM) start(ctx context.Context) error {
	return v.call(ctx, http.MethodPut, "/actions", `{"action_type":"InstanceStart"}`)
}

// stop sends Ctrl-Alt-Del and waits for the process to exit.
func (v *floorVM) stop(ctx context.Context) error {
	if err := v.call(ctx, http.MethodPut, "/actions", `{"action_type":"SendCtrlAltDel"}`); err != nil {
		return err
	}
	select {
	case err := <-v.exited:
		v.exited <- err
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("floor %s: no exit 10 s after Ctrl-Alt-Del", v.id)
	}
}

func (v *floorVM) pause(ctx context.Context) error {
	return v.call(ctx, http.MethodPatch, "/vm", `{"state":"Paused"}`)
}

func (v *floorVM) resume(ctx context.Context) error {
	return v.call(ctx, http.MethodPatch, "/vm", `{"state":"Resumed"}`)
}

func (v *floorVM) snapshot(ctx context.Context, dir string) (snapshotRef, error) {
	if err := v.pause(ctx); err != nil {
		return snapshotRef{}, err
	}
	if err := v.call(ctx, http.MethodPut, "/snapshot/create", fmt.Sprintf(`{"snapshot_path":%q,"mem_file_path":%q}`,
		filepath.Join(dir, "state"), filepath.Join(dir, "mem"))); err != nil {
		return snapshotRef{}, err
	}
	return snapshotRef{dir: dir}, v.resume(ctx)
}

// destroy is SIGKILL, the wait for the exit, and the socket's removal.
func (v *floorVM) destroy() error {
	if v.tr != nil {
		v.tr.CloseIdleConnections()
	}
	v.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-v.exited:
		v.exited <- err
	case <-time.After(10 * time.Second):
		return fmt.Errorf("floor %s: no exit 10 s after SIGKILL", v.id)
	}
	if err := os.Remove(v.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// pid returns the process's pid.
func (v *floorVM) pid(context.Context) (int, error) { return v.cmd.Process.Pid, nil }

// noticeExit waits for cmd.Wait to return.
func (v *floorVM) noticeExit(ctx context.Context) error {
	select {
	case err := <-v.exited:
		v.exited <- err
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
