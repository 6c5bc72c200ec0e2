// Package vsock connects the host and a Firecracker guest over
// virtio-vsock. It is for host programs that talk to a guest's own
// services (package agent's client uses it) and for guest programs that
// listen on a vsock port (cmd/mvm-agent is one).
//
// Firecracker exposes a guest's vsock device on the host as a unix socket
// (the VM's Spec.Vsock path, VM.Backend.VsockPath). A host program reaches
// a guest port by connecting to that socket and writing "CONNECT <port>\n";
// Firecracker answers "OK <host port>\n" and from then on the connection is
// a byte stream to the guest's listener. [Dial] does that handshake, and
// retries while the guest has no listener yet (Firecracker then closes the
// connection without an answer), until its context ends.
//
// A guest program that connects to the host (CID 2) on a port reaches
// Firecracker, which connects to the unix socket "<uds>_<port>";
// [ListenHost] listens there.
//
// Inside the guest, [Listen] opens an AF_VSOCK listener on a port (Linux
// only). Guest context ids need not be unique across the host: the host side
// of every VM is a unix socket of its own, so no CID allocator is needed.
package vsock
