package agent

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// readChunk is the size of one read: large enough that the rate limiter's
// buckets, not the syscalls, set the pace.
const readChunk = 1 << 20

// readTimed reads a.Bytes bytes from a.Path with O_DIRECT (falling back to
// buffered reads where the file system refuses it) into a page-aligned
// buffer, and times the reads.
func readTimed(a ReadArgs) (ReadResult, error) {
	if err := checkRead(a); err != nil {
		return ReadResult{}, err
	}
	direct := true
	fd, err := unix.Open(a.Path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) {
		direct = false
		fd, err = unix.Open(a.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return ReadResult{}, fmt.Errorf("open %s: %w", a.Path, err)
	}
	defer unix.Close(fd)
	// An anonymous mapping is page-aligned, as O_DIRECT wants.
	buf, err := unix.Mmap(-1, 0, readChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return ReadResult{}, fmt.Errorf("read buffer: %w", err)
	}
	defer unix.Munmap(buf)
	var done int64
	start := time.Now()
	for done < a.Bytes {
		n := min(int64(len(buf)), a.Bytes-done)
		if direct {
			n = (n + 4095) &^ 4095 // O_DIRECT reads whole blocks
		}
		got, err := unix.Pread(fd, buf[:n], a.Offset+done)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return ReadResult{}, fmt.Errorf("read %s at %d: %w", a.Path, a.Offset+done, err)
		}
		if got == 0 {
			break
		}
		done += int64(got)
	}
	elapsed := time.Since(start)
	return ReadResult{Bytes: min(done, a.Bytes), ElapsedNS: int64(elapsed), Direct: direct}, nil
}
