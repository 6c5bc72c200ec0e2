//go:build linux

package uffd

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// extent is a byte range [start, end) of the memory file.
type extent struct{ start, end int64 }

// fileHoles returns the holes of the first size bytes of fd, found with
// SEEK_DATA/SEEK_HOLE. A file system without SEEK_DATA support yields none.
func fileHoles(fd int, size int64) ([]extent, error) {
	var holes []extent
	var off int64
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			holes = append(holes, extent{off, size})
			break
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("lseek SEEK_DATA at %d: %w", off, err)
		}
		if data > off {
			holes = append(holes, extent{off, min(data, size)})
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("lseek SEEK_HOLE at %d: %w", data, err)
		}
		off = hole
	}
	return holes, nil
}

// holePages marks the pages of a region (file range [off, off+size), pages
// of 1<<shift bytes) that lie entirely inside a hole. It returns nil when no
// page does.
func holePages(holes []extent, off, size uint64, shift uint) staticBitmap {
	var b staticBitmap
	ps := uint64(1) << shift
	for _, h := range holes {
		s, e := max(uint64(h.start), off), min(uint64(h.end), off+size)
		if s >= e {
			continue
		}
		first := (s - off + ps - 1) >> shift
		last := (e - off) >> shift
		if first >= last {
			continue
		}
		if b == nil {
			b = make(staticBitmap, ((size>>shift)+63)/64)
		}
		b.setRange(first, last-first)
	}
	return b
}
