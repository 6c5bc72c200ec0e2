package vsock

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// maxSockPath is the size of sockaddr_un.sun_path, its NUL included.
const maxSockPath = 108

// dialUnix connects to the unix socket at path; a path too long for a
// socket address is reached as /proc/self/fd/<dir>/<name> through a
// descriptor of its directory.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	if len(path) < maxSockPath {
		return d.DialContext(ctx, "unix", path)
	}
	dir, err := os.OpenFile(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	short := "/proc/self/fd/" + strconv.Itoa(int(dir.Fd())) + "/" + filepath.Base(path)
	if len(short) >= maxSockPath {
		return nil, &net.OpError{Op: "dial", Net: "unix", Err: unix.ENAMETOOLONG}
	}
	return d.DialContext(ctx, "unix", short)
}
