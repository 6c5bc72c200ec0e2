// Package server is the stand-in firecracker used only by tests: a
// program (cmd/fcstandin) that serves Firecracker's REST API on a unix
// socket exactly like Firecracker v1.0 or 1.17.0-dev does, simulates the
// microVM behind it, and is strict, so that code passing against it works
// against the real Firecracker. There is no KVM: no guest runs.
//
// It is a module of its own, so that what it needs to check requests
// against the API specification (kin-openapi, YAML, a router) stays out of
// the library's module graph; see package internal/fcstandin, which holds
// what tests of other packages use: Build, SpecDir, and the constants
// shared with this package (API flavours, spec file names, fault messages,
// guest I/O figures). Tests get the binary and the reference specs from
// it, then spawn the binary like firecracker:
//
//	bin := fcstandin.Build(t)
//	cmd := exec.Command(bin, "--api-sock", sock, "--id", "vm1")
//	cmd.Env = append(os.Environ(), "FCSTANDIN_SPEC_DIR="+fcstandin.SpecDir(t))
//
// # Command line
//
// As firecracker: --api-sock PATH (default /run/firecracker.socket),
// --id ID (1-64 of [A-Za-z0-9-]), --version (prints "Firecracker v<ver>",
// exit 0), --log-path, --level, --module, --show-level, --show-log-origin
// (configure the logger at start; PUT /logger then fails), --metrics-path
// (likewise for PUT /metrics), --http-api-max-payload-size (default 51200),
// --mmds-size-limit (default: the payload limit), --enable-pci (post-boot
// PUT of drives, network interfaces and pmem is then accepted as hot-plug),
// and the accepted-and-ignored --boot-timer, --seccomp-filter,
// --no-seccomp, --start-time-us, --start-time-cpu-us, --parent-cpu-time-us.
// --config-file, --no-api, --metadata, --snapshot-version and
// --describe-snapshot are refused. Any bad flag or id: a message on stderr,
// exit status 1. If the socket path exists at start: "Failed to open the API
// socket at: <path>. Check that it is not already used." and exit 1. The
// socket is never removed (Firecracker leaves it behind), nor are vsock
// sockets.
//
// # Controls (environment)
//
//   - FCSTANDIN_API=v1.0|latest (default latest): the spec validated against
//     (firecracker-api-v1.0.yaml or firecracker-api.yaml) and the version
//     reported (the spec's info.version: "1.0.0" or "1.17.0-dev") by
//     --version, GET /version and GET / (vmm_version).
//   - FCSTANDIN_SPEC_DIR: folder holding both spec files. Default:
//     MVM_REFERENCE_DIR, else a shared/reference folder found walking up
//     from the working directory and from the executable's directory. Not
//     found: exit 1 with a message naming FCSTANDIN_SPEC_DIR.
//   - FCSTANDIN_SPEC_CACHE: where the prepared validator document is cached
//     (see Validation): unset for os.UserCacheDir()/mvm-fcstandin (else a
//     per-user folder in the temporary directory), "off" to prepare it
//     from the spec on every start, or an absolute folder.
//   - FCSTANDIN_CRASH: comma-separated triggers. An action type
//     (InstanceStart, FlushMetrics, SendCtrlAltDel) or "METHOD /path" (e.g.
//     "PUT /snapshot/create") crashes when that request arrives, before any
//     answer: a Rust-panic-like "thread 'fc_vmm' panicked at ..." on stderr,
//     then the process kills itself with SIGABRT (panic=abort; the parent
//     sees "terminated by signal 6"; no core file). "after-start:200ms"
//     dies by SIGSEGV that long after the VM starts running (InstanceStart
//     or a snapshot load), after Firecracker's "Shutting down VM after
//     intercepting signal 11" line.
//   - FCSTANDIN_EXIT=after-start:<duration>[:<status>]: that long after
//     the VM first starts running (InstanceStart or a snapshot load), the
//     process exits by itself with status (default 0). Status 0 is the
//     guest resetting itself, as a Linux guest does on reboot or poweroff
//     with reboot=k: "reboot: Restarting system" on the console, then exit
//     0 after FCSTANDIN_STOP_DELAY (deferred until resume when paused).
//     Another status is Firecracker ending on an error: an error log line,
//     "Vmm is stopping." and that exit status. "kvm" is a vCPU that KVM
//     stopped, as Firecracker v1.7 ends then: "Received
//     KVM_EXIT_INTERNAL_ERROR signal" from fc_vcpu 0, "Vmm is stopping."
//     and exit status 0.
//   - FCSTANDIN_START_DELAY: delay before binding the API socket (Go
//     duration or milliseconds), to exercise readiness polling.
//   - FCSTANDIN_STOP_DELAY: how long after SendCtrlAltDel the process prints
//     "reboot: Restarting system" and exits 0 (default 50ms).
//   - FCSTANDIN_IGNORE_STOP=1: SIGTERM and SIGINT are ignored and
//     SendCtrlAltDel has no effect (a hung guest): only SIGKILL ends the
//     process.
//   - FCSTANDIN_SNAPSHOT_DELAY: how long PUT /snapshot/create takes before
//     it writes the files; the API answers nothing else meanwhile.
//   - FCSTANDIN_ANSWER_DELAY: comma-separated "METHOD /path=<duration>":
//     such a request takes effect at once and is answered that much later
//     (other requests are served meanwhile), to kill a client between
//     the two.
//
// SIGTERM and SIGINT are not handled, as in Firecracker: the process dies
// by the signal.
//
// # HTTP transport (micro-http)
//
// HTTP/1.1 over the socket; "Server: Firecracker API"; requests are handled
// one at a time. Success: 204 without body for mutations, 200 with JSON for
// GETs. Errors: 400 {"fault_message": "..."} (413 for an MMDS store over
// its limit). Bodies are read only via Content-Length: a chunked body
// arrives empty (latest: "Empty PUT request."); in v1.0 emulation a chunked
// request gets micro-http's parse-error answer, a 400 whose body is
// `{ "error": "Invalid request.\nAll previous unanswered requests will be
// dropped." }` (not fault_message JSON), and the connection is closed. The
// same parse-error shape answers a body over the payload limit ("Request
// payload with size N is larger than the limit of 51200 allowed by
// server.") and methods other than GET, PUT, PATCH ("Invalid HTTP Method:
// Unsupported HTTP method."). The 11th simultaneous connection gets
// micro-http's raw "HTTP/1.1 503" with `{ "error": "Too many open
// connections" }` and is closed.
//
// # Validation
//
// Routing follows Firecracker's parser (first path segment, then
// sub-paths); an operation absent from the emulated spec is "Invalid request
// method and/or path: <METHOD> <first segment>.". Bodies are checked by
// kin-openapi (spec YAML -> JSON, openapi2conv, gorillamux router,
// openapi3filter) against a tightened spec: the deny_unknown_fields bodies
// are closed (additionalProperties false) while Metrics, TokenBucket,
// NetworkOverride, VsockOverride, BalloonStartCmd and the MMDS payload stay
// lenient; every integer is unsigned; PATCH /machine-config uses an
// all-optional copy of MachineConfiguration; aarch64 CPU-template fields
// are unknown (the stand-in is x86_64); Logger.level is case-insensitive on
// latest. Schema failures read like serde's: "An error occurred when
// deserializing the json body of a request: unknown field `foo`, expected
// one of ...". Then the semantic rules: pre/post-boot per endpoint as in
// rpc_interface.rs, path ids, logger and metrics once, vcpu and memory
// rules, files opened at PUT (drives, kernel, initrd, pmem, log and metrics
// files must exist), TAPs really opened (/dev/net/tun, TUNSETIFF with
// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), vsock bound at PUT, mmds/config
// interfaces must exist, snapshot rules below.
//
// Start-up cost: preparing that document (YAML parsing, conversion,
// tightening) is most of a start's CPU, so the result, reduced to what
// request routing and body validation read (no descriptions, examples or
// responses), is cached as JSON keyed by the sha256 of the spec bytes, the
// flavour and the executable's Go build ID; the spec file is still read and
// hashed on every start. Entries are written atomically with a checksum;
// a damaged entry is rebuilt. With a cache hit the API socket is bound
// while the document loads in the background, and requests wait for it;
// without one the document is prepared before the socket is bound. Either
// way a request is validated against the same document.
//
// Fault messages used verbatim from Firecracker are the Msg* constants;
// device errors follow Firecracker's wording with Rust-style OS errors
// ("No such file or directory (os error 2)").
//
// # Simulated VM
//
// InstanceStart needs a boot source; the VM is then Running. The guest
// serial console (stdout, or PUT /serial's file) prints boot-like lines
// ending in "<id> login: " only when boot_args contain console=ttyS0 and
// not 8250.nr_uarts=0, as a Linux guest would (Firecracker's default
// boot_args disable the UART). Log lines go to stdout until a log path is
// set, in Firecracker's format. PATCH /vm pauses/resumes (idempotent).
// SendCtrlAltDel exits 0 after FCSTANDIN_STOP_DELAY (deferred until resume
// when paused). FlushMetrics writes one JSON line with Firecracker's groups
// (counters are deltas since the last flush); metrics are also flushed every
// 60 s and at exit.
//
// vsock: after boot the device accepts connections on uds_path and speaks
// Firecracker's host-initiated protocol: "CONNECT <port>\n" ->
// "OK <hostport>\n" (host ports from 1073741824 up), then a guest service
// echoes bytes back. Bad commands close the connection; while the VM is
// paused the guest does not answer (2 s timeout) or echo. With
// FCSTANDIN_VSOCK_GUEST=DIR the guest is a folder of unix sockets instead:
// a connection to port P is bridged to DIR/P.sock (half-closes passed on),
// and closed without an answer when nothing listens there, so a test can
// run the real guest agent as a host process behind the stand-in.
//
// # Snapshots
//
// Guest memory is modelled sparsely: at boot one 4 KiB page in 64 gets
// content derived from the VM id and a boot counter, and each pause after
// running "touches" 8 more pages. Pages written since the last snapshot
// create or load are dirty.
//
// PUT /snapshot/create (VM Paused) writes snapshot_path as
// magic u64 | u32 length | JSON state | CRC64-ECMA, the JSON holding the
// snapshot format version ("1.0.0" for v1.0, "8.0.0" for latest), the
// emulated Firecracker version, the full VM configuration, the memory size
// and a digest of guest memory (sha256 over index+content of every non-zero
// page); and mem_file_path: mem_size_mib MiB, sparse, with the non-zero
// pages (Full) or only the dirty pages (Diff, which needs
// track_dirty_pages). Open vsock connections are reset. Overwriting the
// memory file that backs a File-restored VM kills the process with SIGBUS.
//
// PUT /snapshot/load only on a fresh process (no boot-path resource yet):
// it reads and checks the state file (magic, CRC, same format major), then
// reopens drives, TAPs (network_overrides) and binds vsock (vsock_override),
// reads the memory (File: the file, holes skipped; Uffd: Firecracker's
// handshake through internal/uffdguest, then every page is faulted in
// through the page server) and checks the digest. Any failure answers 400
// and then exits with status 1, like Firecracker. resume_vm -> Running,
// else Paused.
package server
