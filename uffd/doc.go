// Package uffd is the userfaultfd page server for restoring Firecracker
// snapshots with a Uffd memory backend (PUT /snapshot/load with
// "mem_backend": {"backend_type": "Uffd", "backend_path": <socket>}). It is
// for programs that restore Firecracker snapshots themselves and want a
// page server, and for the firecracker runtime (restores with
// MemoryBackendUffd); it depends on nothing else of mvm. [Listen] and
// [Server] serve in the caller's process; [Spawn] runs the server as its
// own detached process (cmd/mvm-uffd, found by [FindBinary]), which is what
// a VM that must outlive its driver needs (see Lifetime below), so it is
// public too.
//
// # Protocol
//
// A Server listens on a unix stream socket (Listen). Firecracker connects
// once and sends one message: a JSON array of guest memory regions
// ({base_host_virt_addr, size, offset, page_size} and, from older versions,
// page_size_kib, which is in bytes, or no page size at all, meaning 4 KiB)
// with its userfaultfd attached as SCM_RIGHTS. Serve validates the message
// (JSON, exactly one fd that is an initialised userfaultfd, at least one
// region, page size 4 KiB or 2 MiB, aligned sizes and addresses, no region
// beyond the memory file, no overlap) and reports violations as
// ErrBadHandshake; a peer that does not connect and send within
// Config.AcceptTimeout yields ErrAcceptTimeout, and the socket file is
// removed in both cases (and after a successful accept: Firecracker connects
// only once). The peer's pid comes from SO_PEERCRED (Server.PeerPID) and can
// be pinned with Config.PeerPID.
//
// # Serving
//
// One goroutine, locked to its OS thread, runs the fault path: epoll_wait on
// the userfaultfd, the connection and the peer's pidfd; read(2) batches of
// up to 64 uffd_msg until none is left; resolve each fault with a single
// ioctl (raw system calls, no allocation, no goroutine handoff). A fault on
// the page the previous fault of the batch filled costs nothing more (the
// fill woke every thread waiting there). Every 5 ms of serving it passes
// through the Go scheduler (runtime.Gosched): a goroutine that only makes
// system calls would otherwise have its P taken away by sysmon over and over.
//   - UFFD_EVENT_PAGEFAULT: UFFDIO_COPY of the whole page (4 KiB or 2 MiB)
//     from a read-only MAP_SHARED mapping of the memory file at
//     offset + (page - base_host_virt_addr). Pages entirely inside a hole of
//     the (sparse) memory file, found once with SEEK_DATA/SEEK_HOLE, get
//     UFFDIO_ZEROPAGE (a copy of zeros for hugetlbfs, which has no zero page).
//   - UFFD_EVENT_REMOVE (the balloon's madvise(MADV_DONTNEED)) and
//     UFFD_EVENT_UNMAP: the pages entirely inside the range are marked
//     removed; later faults there get zero pages, never file contents.
//     Removes in a batch are applied before the batch's faults.
//   - EEXIST: the page is already present (a fault raced the prefetch); the
//     faulting thread is woken with UFFDIO_WAKE to be sure.
//   - EAGAIN: guest memory is changing (a remove is queued but not read): the
//     fault is kept and retried after reading more events, polling with a
//     1 ms timeout meanwhile.
//   - UFFD_EVENT_FORK closes the child's userfaultfd (the child is not
//     served); UFFD_EVENT_REMAP is a fatal error. Firecracker requests
//     neither.
//
// With Config.Prefetch a second goroutine copies every page that is not yet
// present, in UFFDIO_COPY chunks of up to 128 KiB (one page for 2 MiB
// pages; a chunk that hits a present page continues after it), skipping
// removed pages, then fills the holes with zero pages. Faults take priority: the fault loop
// flags that it is waiting and the prefetch yields between chunks. While the
// prefetch runs, reading events and prefetch copies are serialised by a
// mutex (afterwards the fault loop reads without it), because once read(2)
// returns a REMOVE event the guest's madvise goes on to zap the range, and a
// copy decided before the range was marked removed must not land after the
// zap. Per-page state (present, removed) lives in bitmaps with atomic
// words; Stats reports faults, pages copied, zero pages, removes, bytes
// prefetched and the prefetch duration.
//
// # Lifetime
//
// A restored VM must keep running when the driver process exits or
// restarts, and Firecracker hangs for ever on its next missing page if the
// handler is gone (it keeps its own copy of the userfaultfd, so the kernel
// never releases it). Therefore:
//
//   - The handler is its own small process, cmd/mvm-uffd, which the
//     Firecracker runtime starts detached (Spawn: own session, output to a
//     log file next to the socket) before PUT /snapshot/load, one per
//     restored VM. It keeps no state besides the socket and its log.
//   - It exits by itself when Firecracker exits: the connection Firecracker
//     keeps open hangs up, or its pidfd becomes readable (Serve returns nil).
//   - With Config.Prefetch and Config.Detach (the defaults of mvm-uffd), once
//     every page is present the handler unregisters guest memory from the
//     userfaultfd (UFFDIO_UNREGISTER works on the peer's address space). From
//     then on the VM does not depend on the handler at all: pages the
//     balloon frees later come back as ordinary zero-filled pages. The
//     process stays (idle in epoll_wait) until Firecracker exits, only to drain an
//     event that raced the unregistration.
//   - Until then the handler is critical: if it fails, mvm-uffd kills the
//     peer (Server.KillPeer) rather than leave a VM that hangs, and a
//     supervisor that finds the handler dead must kill Firecracker. A
//     thread blocked on a missing page sleeps killably, so SIGKILL works.
//     (Were the peer to close its own copy of the userfaultfd, as
//     Firecracker does not, the handler's death would instead turn every
//     missing page into a zero page: silent corruption, not a hang.)
//
// Tests play Firecracker's side with internal/uffdguest in a child process.
package uffd
