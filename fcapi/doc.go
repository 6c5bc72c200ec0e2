// Package fcapi is a typed client of the Firecracker REST API, which a
// firecracker process serves over a unix socket (--api-sock). It is for
// programs that drive a firecracker process themselves (the firecracker
// runtime is one); it depends on nothing else of mvm. Embedders of the
// runtime do not need it.
//
// One [Client] talks to one socket: [New] takes the socket path and
// [Options]; there is one method per endpoint the runtime uses (PUT,
// PATCH and GET of machine-config, boot-source, drives,
// network-interfaces, vsock, mmds, logger, metrics, actions, vm,
// snapshot, balloon, entropy, serial). The bodies are this package's own
// Go types (see models.go), not generated swagger models.
//
// # Transport
//
// HTTP/1.1 over the unix socket with host "localhost". The dialer honours
// the call's context; one connection is kept alive and reused, and
// concurrent calls queue for it (Firecracker's API thread serves one
// request at a time and refuses an 11th connection). Every body is sent with Content-Length, never chunked:
// Firecracker reads bodies only by Content-Length. Each call is bounded
// by the earlier of the context's deadline and [Options.Timeout] (5s by
// default); PUT /snapshot/create and /snapshot/load use
// [Options.SnapshotTimeout] (2m by default) instead.
//
// # Errors
//
//   - A non-2xx answer is an [*APIError] with the status code and the
//     "fault_message" of Firecracker's JSON error body, or the raw body
//     when it is not that JSON.
//   - Transport failures are wrapped with the method and path and keep
//     the net error chain: errors.Is(err, syscall.ECONNREFUSED) (nobody
//     listens), errors.Is(err, syscall.ENOENT) (no socket file),
//     errors.Is(err, context.DeadlineExceeded) (per-call timeout or the
//     context's deadline), errors.Is(err, context.Canceled).
//   - A body that breaks an API rule (empty required field, value out of
//     range, a path id with a character other than [A-Za-z0-9_]) is
//     refused before sending with a [*FieldError] matching
//     [ErrInvalidArgument].
//   - A body that uses something the target version lacks is refused
//     before sending with an [*UnsupportedError] matching [ErrUnsupported]
//     that names the feature and its minimum version.
//
// # Models
//
// Optional fields are omitted when unset, so a Firecracker never sees a
// field it does not know unless the caller set it (and then the version
// gate below refuses it for an older target). Fields that v1.0 requires
// are always sent: machine-config vcpu_count and mem_size_mib; a
// virtio-block drive's drive_id, path_on_host, is_read_only and
// is_root_device; network-interfaces iface_id and host_dev_name; vsock
// guest_cid and uds_path; balloon amount_mib and deflate_on_oom;
// mmds/config network_interfaces; metrics metrics_path; snapshot
// create mem_file_path and snapshot_path; logger log_path before 1.6.
// Bools whose false is the API default are plain bools and omitted when
// false; PATCH bodies use pointers so that only the set fields are sent.
//
// # Versions
//
// The client targets [Options.Version] or the version given to
// [Client.SetVersion] (typically the result of
// [Client.FirecrackerVersion] right after the socket comes up); without
// one it targets the newest API (1.17.0-dev). [Version.AtLeast] compares
// major.minor only, so 1.17.0-dev counts as 1.17. The gates, from
// firecracker-api-notes.md §3 (swagger history) and the Firecracker
// CHANGELOG:
//
//	feature                                         request                       min
//	mem_backend (File; Uffd)                        PUT /snapshot/load            1.1
//	cpu_template "None"                             PUT|PATCH /machine-config     1.1
//	cpu_template "T2S"                              PUT|PATCH /machine-config     1.2
//	cpu_template "T2CL", "T2A"                      PUT|PATCH /machine-config     1.3
//	cpu_template "V1N1"                             PUT|PATCH /machine-config     1.4
//	the endpoint                                    PUT /entropy                  1.4
//	socket (vhost-user-block drive)                 PUT /drives/{id}              1.6
//	module, level Trace/Off, no log_path            PUT /logger                   1.6 (*)
//	huge_pages ("None", "2M")                       PUT|PATCH /machine-config     1.7
//	network_overrides                               PUT /snapshot/load            1.12
//	track_dirty_pages (else enable_diff_snapshots)  PUT /snapshot/load            1.13
//	imds_compat                                     PUT /mmds/config              1.14
//	free_page_hinting, free_page_reporting          PUT /balloon                  1.14
//	the endpoint                                    PUT /serial                   1.14
//	mtu                                             PUT /network-interfaces/{id}  1.16
//	vsock_override, clock_realtime                  PUT /snapshot/load            1.16
//	rate_limiter                                    PUT /serial                   1.16
//	huge_pages "Transparent"                        PUT|PATCH /machine-config     1.17
//	huge_pages                                      PUT /snapshot/load            1.17
//	emit_id, properties                             PUT /metrics                  1.17
//
// (*) The notes date module to 1.6; log_path optional and the Trace/Off
// levels are dated to the same logger rework (1.6) by inference.
//
// Snapshot load is written per version rather than refused where an
// equivalent exists: before 1.1 the memory file goes in mem_file_path (a
// Uffd backend is refused); from 1.1 a MemFilePath is sent as
// mem_backend {"backend_type":"File"} (mem_file_path is deprecated);
// TrackDirtyPages is sent as track_dirty_pages from 1.13 and as
// enable_diff_snapshots before.
//
// Everything else the client sends exists in v1.0.0. [Features],
// [MinVersion], [Supported] and [Client.Supports] expose the table.
//
// Not covered (not used by the runtime): PUT /cpu-config, /pmem,
// /hotplug/memory, balloon hinting, and the DELETE hot-unplug endpoints.
package fcapi
