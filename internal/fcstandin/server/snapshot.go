package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/mvm-dev/microvm/internal/uffdguest"
	"golang.org/x/sys/unix"
)

const pageSize = 4096

// snapshotMagic starts every stand-in state file (Firecracker's x86_64
// magic with a stand-in marker in the low byte).
const snapshotMagic uint64 = 0x07101984866400FC

// snapshotFormat is the state-file format version each flavour writes and
// accepts (same MAJOR only, like Firecracker).
var snapshotFormat = map[string]string{fcstandin.APIv10: "1.0.0", fcstandin.APILatest: "8.0.0"}

// guestMemory models guest RAM sparsely: only non-zero 4 KiB pages exist.
//
// At boot the guest writes one page in every 64 with content derived from
// the VM id and the boot counter, so different VMs (and boots) differ. Each
// time the VM is paused after running, the guest has "touched" 8 more pages
// (deterministic positions and content). A page is dirty when it was written
// since the last snapshot create or load: that is what a Diff snapshot holds.
type guestMemory struct {
	size    int64
	pages   map[int64][]byte
	dirty   map[int64]bool
	seed    string
	touches uint64
}

func newGuestMemory(memMib int, id string, boot uint64) *guestMemory {
	m := &guestMemory{size: int64(memMib) << 20, pages: map[int64][]byte{}, dirty: map[int64]bool{},
		seed: fmt.Sprintf("%s/boot%d", id, boot)}
	for p := int64(0); p < m.size/pageSize; p += 64 {
		m.write(p, fmt.Sprintf("boot/%d", p))
	}
	return m
}

func (m *guestMemory) write(page int64, tag string) {
	sum := sha256.Sum256([]byte(m.seed + "/" + tag))
	b := make([]byte, pageSize)
	rand.NewChaCha8(sum).Read(b)
	m.pages[page] = b
	m.dirty[page] = true
}

// touch is the guest running for a while: it writes 8 pages.
func (m *guestMemory) touch(bool) {
	n := m.size / pageSize
	if n == 0 {
		return
	}
	m.touches++
	for k := int64(0); k < 8; k++ {
		p := (int64(m.touches)*7919 + k*97) % n
		m.write(p, fmt.Sprintf("touch/%d/%d", m.touches, k))
	}
}

// digest is sha256 over (page index, page bytes) of every non-zero page in
// ascending order: equal digests mean equal guest memory.
func (m *guestMemory) digest() string {
	idx := make([]int64, 0, len(m.pages))
	for p := range m.pages {
		idx = append(idx, p)
	}
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	h := sha256.New()
	var n [8]byte
	for _, p := range idx {
		if isZero(m.pages[p]) {
			continue
		}
		binary.LittleEndian.PutUint64(n[:], uint64(p))
		h.Write(n[:])
		h.Write(m.pages[p])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// snapshotState is the JSON body of a stand-in state file.
type snapshotState struct {
	FormatVersion      string   `json:"format_version"`
	FirecrackerVersion string   `json:"firecracker_version"`
	VMID               string   `json:"vm_id"`
	BootArgs           string   `json:"boot_args"`
	Config             vmConfig `json:"config"`
	MemSizeMib         int      `json:"mem_size_mib"`
	PageSize           int      `json:"page_size"`
	MemoryDigest       string   `json:"memory_digest"`
	SnapshotType       string   `json:"snapshot_type"`
	BootCount          uint64   `json:"boot_count"`
	Touches            uint64   `json:"touches"`
	MemSeed            string   `json:"mem_seed"`
	CreatedUnixMs      int64    `json:"created_unix_ms"`
}

var crcTable = crc64.MakeTable(crc64.ECMA)

func encodeState(s *snapshotState) ([]byte, error) {
	js, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, snapshotMagic)
	binary.Write(&b, binary.LittleEndian, uint32(len(js)))
	b.Write(js)
	binary.Write(&b, binary.LittleEndian, crc64.Checksum(b.Bytes(), crcTable))
	return b.Bytes(), nil
}

func decodeState(b []byte, wantFormat string) (*snapshotState, error) {
	if len(b) < 8 {
		return nil, errors.New("Snapshot error: Failed to read the snapshot magic id: the file is truncated")
	}
	if m := binary.LittleEndian.Uint64(b); m != snapshotMagic {
		return nil, fmt.Errorf("Snapshot error: Invalid magic id: %#x", m)
	}
	if len(b) < 12 {
		return nil, errors.New("Snapshot error: the state file is truncated")
	}
	n := int(binary.LittleEndian.Uint32(b[8:]))
	if len(b) < 12+n+8 {
		return nil, errors.New("Snapshot error: the state file is truncated")
	}
	want := binary.LittleEndian.Uint64(b[12+n:])
	if got := crc64.Checksum(b[:12+n], crcTable); got != want {
		return nil, fmt.Errorf("Snapshot error: Crc64 validation failed: %#x != %#x", got, want)
	}
	var s snapshotState
	if err := json.Unmarshal(b[12:12+n], &s); err != nil {
		return nil, fmt.Errorf("Snapshot error: Failed to deserialize the state: %v", err)
	}
	major := func(v string) string { m, _, _ := strings.Cut(v, "."); return m }
	if major(s.FormatVersion) != major(wantFormat) {
		return nil, fmt.Errorf("Snapshot error: Unsupported snapshot version %s: this Firecracker (v%s) supports snapshot version %s",
			s.FormatVersion, s.FirecrackerVersion, wantFormat)
	}
	return &s, nil
}

func (v *vmm) snapshotCreate(body []byte) response {
	var p struct {
		MemFilePath  string  `json:"mem_file_path"`
		SnapshotPath string  `json:"snapshot_path"`
		SnapshotType string  `json:"snapshot_type"`
		Version      *string `json:"version"`
	}
	if msg := v.decode("PUT", "/snapshot/create", body, &p); msg != "" {
		return v.fault(msg)
	}
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	if v.state != statePaused {
		return v.fault("Create snapshot error: Cannot create a snapshot: the microVM is not paused (PATCH /vm {\"state\": \"Paused\"} first).")
	}
	if p.SnapshotType == "" {
		p.SnapshotType = "Full"
	}
	if p.SnapshotType == "Diff" && !v.cfg.Machine.TrackDirtyPages {
		return v.fault("Create snapshot error: Cannot create a diff snapshot: dirty page tracking is disabled (set track_dirty_pages).")
	}
	// Overwriting the file that backs a File-restored VM's memory truncates
	// memory the guest still maps: Firecracker dies of SIGBUS.
	if v.memBacking != nil {
		if sameFile(v.memBacking, p.MemFilePath) || sameFile(v.memBacking, p.SnapshotPath) {
			v.crash(unix.SIGBUS, "fcstandin: snapshot create would truncate the memory file backing this restored VM (SIGBUS)")
		}
	}
	if d := v.opts.SnapshotDelay; d > 0 {
		v.Unlock() // the handler's lock: the guest runs on meanwhile
		time.Sleep(d)
		v.Lock()
	}
	t0 := time.Now()
	st := &snapshotState{
		FormatVersion: snapshotFormat[v.api], FirecrackerVersion: v.version, VMID: v.opts.ID,
		BootArgs: v.bootArgs(), Config: v.cfg, MemSizeMib: v.cfg.Machine.MemSizeMib, PageSize: pageSize,
		MemoryDigest: v.mem.digest(), SnapshotType: p.SnapshotType, BootCount: v.bootCount,
		Touches: v.mem.touches, MemSeed: v.mem.seed, CreatedUnixMs: time.Now().UnixMilli(),
	}
	stBytes, err := encodeState(st)
	if err != nil {
		return v.fault("Create snapshot error: Cannot serialize the microVM state: " + err.Error())
	}
	if err := os.WriteFile(p.SnapshotPath, stBytes, 0o644); err != nil {
		return v.fault("Create snapshot error: Cannot save the microVM state: " + pathOsErr(err))
	}
	if err := v.writeMemory(p.MemFilePath, p.SnapshotType == "Diff"); err != nil {
		return v.fault("Create snapshot error: Cannot save the guest memory: " + pathOsErr(err))
	}
	v.mem.dirty = map[int64]bool{}
	if v.vsock != nil {
		v.vsock.resetConns()
	}
	us := uint64(time.Since(t0).Microseconds())
	if p.SnapshotType == "Diff" {
		v.metrics.store("latencies_us", "diff_create_snapshot", us)
	} else {
		v.metrics.store("latencies_us", "full_create_snapshot", us)
	}
	v.log(lvlInfo, "main", "src/vmm/src/rpc_interface.rs:1", fmt.Sprintf("'create %s snapshot' VMM action took %d us.", strings.ToLower(p.SnapshotType), us))
	r := v.noContent()
	if p.Version != nil {
		r = v.deprecated(r, "PUT /snapshot/create: version field is deprecated.")
	}
	return r
}

func pathOsErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return osErr(pe.Err) + " " + pe.Path
	}
	return osErr(err)
}

func sameFile(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}

// writeMemory writes the guest memory file: mem_size_mib long and sparse,
// with every non-zero page (Full) or only the dirty pages (Diff).
func (v *vmm) writeMemory(path string, diff bool) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(v.mem.size); err != nil {
		return err
	}
	for p, b := range v.mem.pages {
		if diff && !v.mem.dirty[p] {
			continue
		}
		if _, err := f.WriteAt(b, p*pageSize); err != nil {
			return err
		}
	}
	return nil
}

// readMemoryFile reads the non-zero pages of a memory file, skipping holes
// with SEEK_DATA/SEEK_HOLE.
func readMemoryFile(f *os.File, size int64) (map[int64][]byte, error) {
	pages := map[int64][]byte{}
	fd := int(f.Fd())
	off := int64(0)
	buf := make([]byte, 1<<20)
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break
			}
			data = off // SEEK_DATA unsupported: read densely
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil || hole > size {
			hole = size
		}
		start := data &^ (pageSize - 1)
		for pos := start; pos < hole; {
			n := int64(len(buf))
			if pos+n > size {
				n = size - pos
			}
			got, err := f.ReadAt(buf[:n], pos)
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			if got == 0 {
				break
			}
			for i := 0; i+pageSize <= got; i += pageSize {
				if pg := buf[i : i+pageSize]; !isZero(pg) {
					pages[(pos+int64(i))/pageSize] = append([]byte(nil), pg...)
				}
			}
			pos += int64(got)
		}
		off = hole
	}
	return pages, nil
}

func pagesFromMemory(mem []byte) map[int64][]byte {
	pages := map[int64][]byte{}
	for off := 0; off+pageSize <= len(mem); off += pageSize {
		if pg := mem[off : off+pageSize]; !isZero(pg) {
			pages[int64(off/pageSize)] = append([]byte(nil), pg...)
		}
	}
	return pages
}

// loadParams is PUT /snapshot/load.
type loadParams struct {
	SnapshotPath string  `json:"snapshot_path"`
	MemFilePath  *string `json:"mem_file_path"`
	MemBackend   *struct {
		BackendType string `json:"backend_type"`
		BackendPath string `json:"backend_path"`
	} `json:"mem_backend"`
	EnableDiffSnapshots *bool `json:"enable_diff_snapshots"`
	TrackDirtyPages     *bool `json:"track_dirty_pages"`
	ResumeVM            bool  `json:"resume_vm"`
	NetworkOverrides    []struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
	} `json:"network_overrides"`
	VsockOverride *struct {
		UdsPath string `json:"uds_path"`
	} `json:"vsock_override"`
	ClockRealtime *bool   `json:"clock_realtime"`
	HugePages     *string `json:"huge_pages"`
}

func (v *vmm) snapshotLoad(body []byte) response {
	var p loadParams
	if msg := v.decode("PUT", "/snapshot/load", body, &p); msg != "" {
		return v.fault(msg)
	}
	if p.MemBackend != nil && p.MemFilePath != nil {
		return v.fault(msgSerdePrefix + "too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	}
	if p.MemBackend == nil && p.MemFilePath == nil {
		return v.fault(msgSerdePrefix + "missing field: either `mem_backend` or `mem_file_path` is required.")
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	if v.bootPath {
		v.log(lvlInfo, "main", "src/vmm/src/rpc_interface.rs:1", "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		return v.fault(fcstandin.MsgLoadNotAllowed)
	}
	t0 := time.Now()
	if err := v.restore(&p); err != nil {
		// A failed load is fatal: answer, then exit.
		r := v.fault("Load snapshot error: Failed to restore from snapshot: " + err.Error())
		r.after = func() {
			v.log(lvlError, "main", "src/firecracker/src/main.rs:1", "Building VMM configured from cmdline json failed: Loading snapshot failed.")
			v.exit(1)
		}
		return r
	}
	us := uint64(time.Since(t0).Microseconds())
	v.metrics.store("latencies_us", "load_snapshot", us)
	v.log(lvlInfo, "main", "src/vmm/src/rpc_interface.rs:1", fmt.Sprintf("'load snapshot' VMM action took %d us.", us))
	r := v.noContent()
	if v.api == fcstandin.APILatest {
		var dep []string
		if p.MemFilePath != nil {
			dep = append(dep, "PUT /snapshot/load: mem_file_path field is deprecated.")
		}
		if p.EnableDiffSnapshots != nil {
			dep = append(dep, "PUT /snapshot/load: enable_diff_snapshots field is deprecated.")
		}
		if len(dep) > 0 {
			r = v.deprecated(r, strings.Join(dep, " "))
		}
	}
	return r
}

// restore brings up a VM from a state file; any error is fatal.
func (v *vmm) restore(p *loadParams) error {
	raw, err := os.ReadFile(p.SnapshotPath)
	if err != nil {
		return fmt.Errorf("Failed to get snapshot state from file: Failed to open snapshot file: %s", pathOsErr(err))
	}
	st, err := decodeState(raw, snapshotFormat[v.api])
	if err != nil {
		return fmt.Errorf("Failed to get snapshot state from file: Failed to load snapshot state from file: %w", err)
	}
	backendType, backendPath := "File", ""
	if p.MemFilePath != nil {
		backendPath = *p.MemFilePath
	} else {
		backendType, backendPath = p.MemBackend.BackendType, p.MemBackend.BackendPath
	}
	if p.HugePages != nil && *p.HugePages == "2M" && backendType != "Uffd" {
		return errors.New("Failed to build microVM from snapshot: Huge pages (2M) require a Uffd memory backend")
	}
	cfg := st.Config
	// Drives reopen the same paths.
	for _, d := range cfg.Drives {
		if d.PathOnHost == nil {
			continue
		}
		f, err := openBacking(*d.PathOnHost, d.IsReadOnly != nil && *d.IsReadOnly)
		if err != nil {
			return fmt.Errorf("Failed to build microVM from snapshot: Block device error: Error manipulating the backing file: %v", err)
		}
		v.driveFiles[d.DriveID] = f
	}
	for _, pm := range cfg.Pmem {
		f, err := openBacking(pm.PathOnHost, pm.ReadOnly)
		if err != nil {
			return fmt.Errorf("Failed to build microVM from snapshot: Pmem device error: %v", err)
		}
		v.pmemFiles[pm.ID] = f
	}
	// Network interfaces reopen their TAPs, possibly overridden.
	for _, o := range p.NetworkOverrides {
		found := false
		for i := range cfg.Nets {
			if cfg.Nets[i].IfaceID == o.IfaceID {
				cfg.Nets[i].HostDevName = o.HostDevName
				found = true
			}
		}
		if !found {
			return fmt.Errorf("Failed to build microVM from snapshot: Invalid network override: no network interface with iface_id %q in the snapshot", o.IfaceID)
		}
	}
	for _, n := range cfg.Nets {
		tap, msg := openTap(n.HostDevName, false)
		if msg != "" {
			return fmt.Errorf("Failed to build microVM from snapshot: Net device error: %s", msg)
		}
		v.taps[n.IfaceID] = tap
	}
	if cfg.Vsock != nil {
		if p.VsockOverride != nil {
			cfg.Vsock.UdsPath = p.VsockOverride.UdsPath
		}
		dev, err := bindVsock(cfg.Vsock.UdsPath, v.gate)
		if err != nil {
			return fmt.Errorf("Failed to build microVM from snapshot: Vsock device error: Error binding to the host-side Unix socket: %s", osErr(err))
		}
		dev.onConn = func() { v.metrics.inc("vsock", "conns_added", 1) }
		v.vsock = dev
	}
	memSize := int64(st.MemSizeMib) << 20
	var pages map[int64][]byte
	switch backendType {
	case "File":
		f, err := os.Open(backendPath)
		if err != nil {
			return fmt.Errorf("Failed to load guest memory: Cannot open the memory file: %s", pathOsErr(err))
		}
		fi, err := f.Stat()
		if err != nil || fi.Size() < memSize {
			f.Close()
			return fmt.Errorf("Failed to load guest memory: the memory file %s is smaller than the guest memory (%d bytes)", backendPath, memSize)
		}
		pages, err = readMemoryFile(f, memSize)
		if err != nil {
			f.Close()
			return fmt.Errorf("Failed to load guest memory: %s", pathOsErr(err))
		}
		v.memBacking = f // mmap(MAP_PRIVATE): the file must stay as it is
	case "Uffd":
		g, err := connectUffd(backendPath, memSize, p.HugePages != nil && *p.HugePages == "2M")
		if err != nil {
			return fmt.Errorf("Failed to load guest memory: Uffd backend: %v", err)
		}
		v.uffdKeep = g
		pages = pagesFromMemory(g.Memory()) // faults every page in through the handler
	default:
		return fmt.Errorf("unknown memory backend %q", backendType)
	}
	mem := &guestMemory{size: memSize, pages: pages, dirty: map[int64]bool{}, seed: st.MemSeed, touches: st.Touches}
	if got := mem.digest(); got != st.MemoryDigest {
		return fmt.Errorf("Failed to load guest memory: the guest memory does not match the snapshot (digest %s, snapshot has %s)", got, st.MemoryDigest)
	}
	// Track dirty pages comes from the load request, not the snapshot.
	cfg.Machine.TrackDirtyPages = (p.TrackDirtyPages != nil && *p.TrackDirtyPages) || (p.EnableDiffSnapshots != nil && *p.EnableDiffSnapshots)
	if v.api == fcstandin.APILatest {
		cfg.Machine.Smt = false
		cfg.Machine.CPUTemplate = nil
	}
	cfg.Boot = nil
	v.cfg = cfg
	v.mem = mem
	v.bootCount = st.BootCount
	v.restored = true
	v.restoredArgs = st.BootArgs
	if p.ResumeVM {
		v.setState(stateRunning)
		v.console("[   10.000000] fcstandin: resumed from snapshot")
	} else {
		v.setState(statePaused)
	}
	v.afterStartCrash()
	v.afterStartExit()
	return nil
}

// connectUffd plays Firecracker's side of the UFFD handshake (through
// internal/uffdguest), with x86 region layout: guests larger than 3.25 GiB
// get two regions.
func connectUffd(path string, memSize int64, huge bool) (*uffdguest.Guest, error) {
	ps := uffdguest.PageSize4K
	if huge {
		ps = uffdguest.PageSize2M
	}
	var opts []uffdguest.Option
	const gapStart = int64(3328) << 20
	if memSize > gapStart {
		opts = append(opts, uffdguest.WithRegions(gapStart, memSize-gapStart))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return uffdguest.Connect(ctx, path, memSize, ps, opts...)
}
