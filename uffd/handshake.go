package uffd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Page sizes Firecracker backs guest memory with.
const (
	pageSize4K = 4096
	pageSize2M = 2 << 20
)

// Region is one guest memory region from Firecracker's handshake.
type Region struct {
	// BaseHostVirtAddr is where the region starts in Firecracker's address
	// space: the address faults report and UFFDIO_COPY writes to.
	BaseHostVirtAddr uint64
	// Size is the region length in bytes.
	Size uint64
	// Offset is where the region's contents start in the memory file.
	Offset uint64
	// PageSize is the backing page size in bytes: 4096 or 2 MiB (hugetlbfs).
	PageSize uint64
}

type wireRegion struct {
	BaseHostVirtAddr *uint64 `json:"base_host_virt_addr"`
	Size             *uint64 `json:"size"`
	Offset           *uint64 `json:"offset"`
	PageSize         *uint64 `json:"page_size"`
	PageSizeKiB      *uint64 `json:"page_size_kib"`
}

// maxRegions bounds the region list (Firecracker sends one or two, a few
// more with memory hotplug).
const maxRegions = 4096

// jsonIncomplete reports whether data is a valid prefix of a JSON text that
// ended too early, so more of the message may still be in flight.
func jsonIncomplete(data []byte) bool {
	var v any
	return errors.Is(json.NewDecoder(bytes.NewReader(data)).Decode(&v), io.ErrUnexpectedEOF)
}

// parseRegions decodes and validates the handshake's region list against a
// memory file of fileSize bytes. Every error wraps ErrBadHandshake.
func parseRegions(data []byte, fileSize int64) ([]Region, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadHandshake, fmt.Sprintf(format, args...))
	}
	var wire []wireRegion
	if err := json.Unmarshal(data, &wire); err != nil {
		return nil, bad("malformed region JSON (want an array of {base_host_virt_addr, size, offset, page_size}): %v", err)
	}
	if len(wire) == 0 {
		return nil, bad("region list is empty: want at least one guest memory region")
	}
	if len(wire) > maxRegions {
		return nil, bad("%d regions: at most %d are supported", len(wire), maxRegions)
	}
	regs := make([]Region, len(wire))
	for i, w := range wire {
		switch {
		case w.BaseHostVirtAddr == nil:
			return nil, bad("region %d: field base_host_virt_addr is missing", i)
		case w.Size == nil:
			return nil, bad("region %d: field size is missing", i)
		case w.Offset == nil:
			return nil, bad("region %d: field offset is missing", i)
		}
		r := Region{BaseHostVirtAddr: *w.BaseHostVirtAddr, Size: *w.Size, Offset: *w.Offset, PageSize: pageSize4K}
		// page_size (v1.12+) wins; page_size_kib (v1.7+) is in bytes despite
		// its name; neither (v1.1 to v1.6) means 4 KiB.
		switch {
		case w.PageSize != nil && w.PageSizeKiB != nil && *w.PageSize != *w.PageSizeKiB:
			return nil, bad("region %d: page_size %d and page_size_kib %d disagree (both are in bytes)", i, *w.PageSize, *w.PageSizeKiB)
		case w.PageSize != nil:
			r.PageSize = *w.PageSize
		case w.PageSizeKiB != nil:
			r.PageSize = *w.PageSizeKiB
		}
		if r.PageSize != pageSize4K && r.PageSize != pageSize2M {
			return nil, bad("region %d: page size %d: must be 4096 or 2097152 bytes", i, r.PageSize)
		}
		if r.Size == 0 || r.Size%r.PageSize != 0 {
			return nil, bad("region %d: size %d: must be a positive multiple of the page size %d", i, r.Size, r.PageSize)
		}
		if r.BaseHostVirtAddr%r.PageSize != 0 || r.BaseHostVirtAddr+r.Size < r.BaseHostVirtAddr {
			return nil, bad("region %d: base_host_virt_addr %#x: must be aligned to the page size %d and not wrap", i, r.BaseHostVirtAddr, r.PageSize)
		}
		if r.Offset%pageSize4K != 0 {
			return nil, bad("region %d: offset %d: must be a multiple of 4096", i, r.Offset)
		}
		if r.Offset+r.Size < r.Offset || r.Offset+r.Size > uint64(fileSize) {
			return nil, bad("region %d: file range [%d, %d) exceeds the memory file size %d", i, r.Offset, r.Offset+r.Size, fileSize)
		}
		regs[i] = r
	}
	if err := checkOverlap(regs, func(r Region) uint64 { return r.BaseHostVirtAddr }, "guest address"); err != nil {
		return nil, bad("%v", err)
	}
	if err := checkOverlap(regs, func(r Region) uint64 { return r.Offset }, "memory file"); err != nil {
		return nil, bad("%v", err)
	}
	return regs, nil
}

func checkOverlap(regs []Region, start func(Region) uint64, what string) error {
	idx := make([]int, len(regs))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return start(regs[idx[a]]) < start(regs[idx[b]]) })
	for k := 1; k < len(idx); k++ {
		p, q := regs[idx[k-1]], regs[idx[k]]
		if start(p)+p.Size > start(q) {
			return fmt.Errorf("regions %d and %d overlap in %s range ([%#x, +%d) and [%#x, +%d))",
				idx[k-1], idx[k], what, start(p), p.Size, start(q), q.Size)
		}
	}
	return nil
}
