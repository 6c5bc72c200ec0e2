// Package network gives each microVM an isolated network: a network
// namespace per VM ("slot", after E2B) holding the TAP device Firecracker
// opens, NAT to a unique host-side address, an nftables egress firewall, and
// persisted leases so that no two VMs share an address or a device name.
// It talks to the kernel only through netlink (vishvananda/netlink) and
// nftables netlink (google/nftables); it never runs ip, iptables or nft.
// It is for embedders that give the firecracker runtime managed
// networking (a [Manager] over [OpenStore], through package
// network/fcnet) and for programs that run firecracker processes
// themselves in such networks.
//
// # Topology
//
//	guest eth0 169.254.0.21/30, MAC 06:00:ac:10:00:02 (in Firecracker)
//	  |
//	  |  slot namespace, pinned at <RunDir>/<name>
//	  |  +---------------------------------------------------+
//	  +--| tap0   169.254.0.22/30                            |
//	     |        ip_forward=1; SNAT guest->HostIP,          |
//	     |        DNAT HostIP->guest; table inet <prefix>_fw |
//	     | veth0  B+1/31, default route via B                |
//	     +------|--------------------------------------------+
//	            |
//	  host namespace (Config.HostNS)
//	     <name> B/31; route HostIP (B+2)/32 via B+1; forwarding on <name>
//	     and EgressInterface (if ip_forward is off)
//	     table inet <prefix>: masquerade the pool out of EgressInterface,
//	     forward slots only to it, no new flow towards a slot, no host input
//
// The guest side is identical in every slot: TAPName, GuestIP, GatewayIP,
// GuestPrefixLen and GuestMAC are constants. A snapshot taken in one slot
// therefore restores in any other (Firecracker's snapshot records the TAP
// name; the guest's ARP cache stays valid) with no address rewriting. What
// differs per slot is HostIP, the VM's unique address: guest traffic leaves
// the slot with that source (SNAT), the host reaches the guest through it
// (DNAT), and the host masquerades it out of the egress interface.
//
// # Address plan and names
//
// Config.Pool (default 10.200.0.0/16) is cut into aligned blocks of four
// addresses, one per slot: B is the host end of the veth pair, B+1 the
// namespace end (a /31 link), B+2 the HostIP, B+3 unused. A /16 gives
// 16384 slots.
//
// A slot is named <prefix>-<HostIP in 8 hex digits>, e.g. "mvm-0ac80002"
// for 10.200.0.2. The name is the host-side veth (at most 6+1+8 = 15
// bytes, within IFNAMSIZ), the namespace file and the lease id, so a
// leftover is recognisable without any record, and two slots cannot share
// a name unless they share an address, which the lease forbids. Inside a
// namespace the names are fixed (tap0, veth0).
//
// # Where namespaces live
//
// Namespaces are pinned by bind mounts under Config.RunDir (default
// /run/mvm/netns), not /var/run/netns: `ip netns` users and tools that
// sweep /var/run/netns do not see or delete them, and Cleanup owns every
// file there that carries the prefix. Like iproute2, New makes RunDir a
// shared mount point so that unmounting a namespace also drops the copies
// in mount namespaces created later by other processes (which would keep
// the namespace alive). To inspect one: nsenter --net=/run/mvm/netns/<name>.
//
// # Persistence
//
// Records go to the Store (OpenStore gives mvm's, a directory of files):
//
//	netlease/<name>   {name, host_ip, token, state: building|built, owner{pid,start,instance}, built_for, created}
//	netvm/<vm id>     {slot, token, policy, tap_uid, tap_gid}
//	netrest/<prefix>  {released: {<slot name>: time}}   addresses resting after Teardown
//	nethost/<prefix>  {egress, egress_was}              forwarding mvm turned on, to restore
//
// A lease reserves an address. It is created, under the Store lock
// "netalloc-<prefix>", before any kernel object, and deleted after the
// last one is gone. A VM has a slot when its netvm record names the lease
// and carries the lease's random token (a stale record never matches a
// later lease of the same address). Claiming a warm slot is therefore one
// atomic Store write. Operations on one VM hold the lock "netvm-<vm id>".
// The vm record and that lock are all that is keyed by the VM id: kernel
// objects are named after the slot, so Rename moves a network to another
// VM id by writing the new id's record with a fresh token and then the
// lease with that token (the commit), with no kernel change and no
// recovery of its own (a crash leaves one stale record at most).
// The owner of a lease is the Manager that built it: a process (pid and
// start time, so a reused pid does not count) and a Manager instance in it.
//
// # Firewall
//
// The threat model (docs/network-isolation.md): the guest is hostile and
// writes any frame into its TAP. It may reach what its Policy allows and
// nothing else; it never reaches the host itself (unless Config.HostAllow
// lists a service), other VMs, or anything through a host interface other
// than the egress one; nothing it sends leaves the slot with a source
// other than its HostIP.
//
// Each slot's namespace has a table "inet <prefix>_fw". Before routing,
// packets that conntrack finds invalid are dropped, and from tap0
// anything not IPv4 or not from GuestIP (so no forged source reaches the
// slot's own ICMP answers); from veth0 only the host (its own addresses)
// may open a flow. Forwarded guest packets then go through the egress
// chain: replies to flows the host opened are let out; the first packets
// of new flows are capped (Policy.NewFlowsPerSecond, Policy.MaxFlows); the
// host's own addresses (its local routing table: addresses, subnet
// broadcasts, loopback) and the pool are dropped whatever Allow says; then
// the Policy's Allow rules accept; then either everything (DenyAll) or
// DefaultDenied is dropped; the rest is accepted. Every packet the guest
// originates is checked, not only the first of a flow. The guest may ping
// the gateway from its own address only, at 10 per second; nothing else
// reaches the slot itself. After SNAT, nothing leaves through veth0 with a
// source other than HostIP. The slot namespace has strict rp_filter, no
// redirects, arp_ignore=1, no IPv6 and nf_conntrack_tcp_loose=0 (a peer's
// mid-stream segment cannot re-create a flow).
//
// SetPolicy refills the rules and sets in one transaction, then flushes
// the slot's conntrack entries in its namespace and in the host
// namespace, so no flow (in either direction, including ones the host
// opened) outlives a policy change. Teardown flushes the host's entries of
// the slot too, and the released HostIP rests (Config.AddressRest, kept in
// the Store) before it is handed out again.
//
// The host table "inet <prefix>" drops what a slot sends to the host
// (input) unless it answers a flow the host opened or Config.HostAllow
// lists it; forwards a slot's traffic only to the egress interface, only
// from the slot's own HostIP (fib reverse-path check per slot veth), and
// never opens a flow towards a slot; drops invalid packets; and
// masquerades the pool out of the egress interface. The host set of every
// slot is refreshed whenever an address of the host namespace changes
// (netlink subscription, for as long as a Manager runs) and at every New.
//
// Forwarding: if the host namespace does not forward already
// (net.ipv4.ip_forward=0), it is enabled only on each slot's veth and on
// the egress interface, and the host table then also stops the egress
// interface's traffic from being routed anywhere but to a slot. The
// egress interface's old value is recorded (nethost/<prefix>) and
// restored by the Close that finds no lease left.
//
// # Warm pool
//
// With Config.PoolSize > 0, a goroutine started by New (not tied to any
// request) keeps that many slots built with the default policy. Setup takes
// one, applies the VM's options if they are not the defaults, and writes
// the netvm record: the cost is one Store write. Close stops the goroutine
// and removes the warm slots; those of a process that died are removed by
// Cleanup.
//
// # Failures and recovery
//
// Set-up is a sequence of idempotent steps (lease, record, namespace,
// sysctls, TAP, veth, routes, NAT, firewall). A failing step rolls back
// what was made; a crash leaves a lease whose owner is dead, which Cleanup
// removes together with its namespace and veth, or, if a VM record holds it
// and keep accepts the VM, finishes building. Cleanup also removes
// namespaces and links that carry the prefix but have no lease, stale vm
// records, and the slots of VMs that keep rejects, and rebuilds damaged
// slots of kept VMs in place. Teardown tolerates a namespace or link that
// was deleted behind its back.
//
// # Running Firecracker in a slot
//
// Start Firecracker from Slot.Do, which runs a function on an OS thread
// switched into the slot's namespace; the child process inherits it.
// Configure the network interface with host_dev_name Slot.TAPName and
// guest_mac Slot.GuestMAC, and add Slot.BootArg to the kernel command line
// (or give Slot.Metadata to the guest through MMDS). With a jailer, pass
// Slot.NetNSPath as --netns and Options.TAPUID/TAPGID as its uid and gid.
//
// # Limits
//
// IPv4 only (IPv6 from the guest is dropped). No DNS: give the guest a
// resolver address and allow it if it is in a denied range (a resolver on
// the host itself needs Config.HostAllow). Packets towards VMs are forwarded by this package's rules only; a
// host firewall that drops forwarded traffic by default (Docker sets the
// iptables FORWARD policy to DROP) must let the pool through. Cleanup
// decides whether a lease's owner is alive from /proc, so Managers sharing
// a Store must share a PID namespace. Linux only; root (CAP_NET_ADMIN and
// CAP_SYS_ADMIN) is required.
package network
